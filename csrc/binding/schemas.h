// Schemas of the native op family, shared by fused_dsconv_native (CUDA) and fused_dsconv_emu (CPU emulator).
// output_mask (as aten::convolution_backward's): which of (grad x, grad dw_weight, grad pw_weight) to compute;
// an unwanted one comes back as an empty tensor and its kernels do not run (csrc/kernels/launch.cuh).
#pragma once

#define DSC_SCHEMAS(m)                                                                                           \
  m.def(                                                                                                         \
      "forward_eval(Tensor x, Tensor dw_weight, Tensor pw_weight, Tensor bias, int stride, int dilation) "       \
      "-> Tensor");                                                                                              \
  m.def(                                                                                                         \
      "forward_train(Tensor x, Tensor dw_weight, Tensor pw_weight, Tensor? bias, Tensor? bn_weight, "            \
      "Tensor? bn_bias, int stride, int dilation, float eps, bool save_y) -> (Tensor, Tensor, Tensor, Tensor)"); \
  m.def(                                                                                                         \
      "backward_eval(Tensor grad_out, Tensor out, Tensor x, Tensor dw_weight, Tensor pw_weight, int stride, "    \
      "int dilation, bool[3] output_mask=[True, True, True]) -> (Tensor, Tensor, Tensor, Tensor)");              \
  m.def(                                                                                                         \
      "backward_train(Tensor grad_out, Tensor x, Tensor dw_weight, Tensor pw_weight, Tensor? bias, "             \
      "Tensor? bn_weight, Tensor? bn_bias, Tensor? y, Tensor mean, Tensor var, int stride, int dilation, "       \
      "float eps, bool[3] output_mask=[True, True, True]) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"); \
  m.def(                                                                                                         \
      "forward_stats(Tensor x, Tensor dw_weight, Tensor pw_weight, Tensor? bias, int stride, int dilation, "     \
      "bool save_y) -> (Tensor, Tensor, Tensor)");                                                               \
  m.def(                                                                                                         \
      "forward_normalize(Tensor x, Tensor dw_weight, Tensor pw_weight, Tensor? bias, Tensor? y, Tensor mean, "   \
      "Tensor var, Tensor? bn_weight, Tensor? bn_bias, int stride, int dilation, float eps) -> Tensor");         \
  m.def(                                                                                                         \
      "backward_reduce(Tensor grad_out, Tensor y, Tensor mean, Tensor var, Tensor? bn_weight, "                  \
      "Tensor? bn_bias, float eps) -> (Tensor, Tensor)");                                                        \
  m.def(                                                                                                         \
      "backward_apply(Tensor grad_out, Tensor x, Tensor dw_weight, Tensor pw_weight, Tensor y, Tensor mean, "    \
      "Tensor var, Tensor? bn_weight, Tensor? bn_bias, Tensor mean_dz, Tensor mean_dz_yhat, int stride, "        \
      "int dilation, float eps, bool[3] output_mask=[True, True, True]) -> (Tensor, Tensor, Tensor)")
