// Python bindings of the CUDA extension cign_fast._cuda.
#include <string>
#include <tuple>

#include <torch/extension.h>

namespace cign_fast {
at::Tensor gumbel_noise_cuda(int64_t batch, int64_t groups, int64_t tokens, int64_t key_a, int64_t key_b,
                             int64_t device_index);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> assign_attention_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t mode, double tau, double eps,
    bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset, int64_t noise_batch_stride,
    bool return_maps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& col_lse, const at::Tensor& col_argmax, const at::Tensor& row_sum, int64_t mode, double tau,
    double eps, bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset,
    int64_t noise_batch_stride);
std::string compiled_archs_cuda();
std::tuple<at::Tensor, at::Tensor> token_distill_kl_forward_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                                 int64_t start, int64_t stop, double temperature,
                                                                 const std::string& reduction);
std::tuple<at::Tensor, at::Tensor> bernoulli_distill_kl_rows_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                                  int64_t start, int64_t stop, double temperature,
                                                                  const std::string& reduction);
}  // namespace cign_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace cf = cign_fast;
  m.doc() = "cign_fast CUDA kernels (launched on torch's current stream)";
  m.def("gumbel_noise", &cf::gumbel_noise_cuda, "Gumbel noise [B, N, S] from the two seed keys",
        py::arg("batch"), py::arg("groups"), py::arg("tokens"), py::arg("key_a"), py::arg("key_b"),
        py::arg("device_index"));
  m.def("assign_attention_forward", &cf::assign_attention_forward_cuda,
        "(out, col_lse, col_argmax, row_sum, hard_map, soft_map) of assign attention",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mode"), py::arg("tau"), py::arg("eps"),
        py::arg("sum_assign"), py::arg("key_a"), py::arg("key_b"), py::arg("noise_batch_offset"),
        py::arg("noise_batch_stride"), py::arg("return_maps"));
  m.def("assign_attention_backward", &cf::assign_attention_backward_cuda, "(grad_q, grad_k, grad_v) of assign attention",
        py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("col_lse"), py::arg("col_argmax"),
        py::arg("row_sum"), py::arg("mode"), py::arg("tau"), py::arg("eps"), py::arg("sum_assign"), py::arg("key_a"),
        py::arg("key_b"), py::arg("noise_batch_offset"), py::arg("noise_batch_stride"));
  m.def("compiled_archs", &cf::compiled_archs_cuda,
        "the compute capabilities the extension was compiled for (nvcc's __CUDA_ARCH_LIST__, e.g. '800,900')");
  m.def("token_distill_kl_forward", &cf::token_distill_kl_forward_cuda, "(loss, grad_student) of the distillation KL",
        py::arg("student"), py::arg("teacher"), py::arg("start"), py::arg("stop"), py::arg("temperature"),
        py::arg("reduction"));
  m.def("bernoulli_distill_kl_rows", &cf::bernoulli_distill_kl_rows_cuda,
        "(per-row loss [R], grad_student) of the per-class Bernoulli distillation KL (reduction: of the gradient)",
        py::arg("student"), py::arg("teacher"), py::arg("start"), py::arg("stop"), py::arg("temperature"),
        py::arg("reduction"));
}
