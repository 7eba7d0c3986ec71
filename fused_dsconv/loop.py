"""One training step, one epoch, one evaluation pass: what every command that trains or scores a model runs."""

from __future__ import annotations

import sys
import time
import torch
import torch.nn.functional as F

from .datasets import DataError, normalize


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(x: torch.Tensor, y: torch.Tensor, device, mean, std, channels_last: bool):
    x = normalize(x.to(device, non_blocking=True), mean, std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def autocast_for(device: torch.device, amp: str):
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


class Progress:
    """tqdm when available and stderr is a terminal; a plain one-line bar without tqdm; silent otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.n, self.bar, self.shown = total, desc, 0, None, 0.0
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="step")
            except ImportError:
                pass

    def due(self, now: float) -> bool:
        """Whether the next step should show new figures: at most twice a second, and at the last step."""
        return self.enabled and (now - self.shown > 0.5 or self.n + 1 == self.total)

    def step(self) -> None:
        """One step done, the figures shown left as they are."""
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def update(self, stats: dict) -> None:
        """One step done, showing ``stats``."""
        self.n += 1
        self.shown = time.perf_counter()
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(stats, refresh=False)
            self.bar.update(1)
        else:
            done = int(30 * self.n / max(1, self.total))
            text = " ".join(f"{k} {v}" for k, v in stats.items())
            sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (30 - done)}] {self.n}/{self.total} {text} ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def train_step(
    model, opt, scaler, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a prepared batch (cross-entropy, scaled for fp16): (loss, logits), detached."""
    with autocast_for(device, amp):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach(), logits.detach()


def train_epoch(model, loader, opt, scaler, device, amp, mean, std, channels_last, progress: Progress) -> dict:
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    sync(device)
    start = time.perf_counter()
    try:  # the bar goes away on Ctrl-C too, so the message that follows is on a clean line
        for x, y in loader:
            x, y = prepare(x, y, device, mean, std, channels_last)
            loss, logits = train_step(model, opt, scaler, x, y, device, amp)
            loss_sum += loss.double() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            now = time.perf_counter()
            if progress.due(now):
                progress.update(
                    {
                        "loss": f"{loss_sum.item() / seen:.4f}",
                        "acc": f"{100 * correct.item() / seen:.2f}%",
                        "img/s": f"{seen / (now - start):.0f}",
                    }
                )
            else:
                progress.step()
        sync(device)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    if seen == 0:
        raise DataError("the training split is empty")
    return {
        "train_loss": loss_sum.item() / seen,
        "train_acc": correct.item() / seen,
        "images_per_s": seen / seconds,
        "train_seconds": seconds,
        "images": seen,
    }


@torch.no_grad()
def evaluate(model, loader, device, amp="none", mean=(0.5,) * 3, std=(0.5,) * 3, channels_last=False) -> dict:
    """Mean cross-entropy and top-1 accuracy over ``loader``."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        x, y = prepare(x, y, device, mean, std, channels_last)
        with autocast_for(device, amp):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    if seen == 0:
        raise DataError("the validation split is empty")
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "images": seen}
