// Python bindings of the CPU extension cign_fast._C.
#include <string>
#include <tuple>

#include <torch/extension.h>

#include "kernels.h"

namespace cign_fast::cpu {
at::Tensor gumbel_noise(int64_t batch, int64_t groups, int64_t tokens, int64_t key_a, int64_t key_b);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
assign_attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t mode, double tau,
                         double eps, bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset,
                         int64_t noise_batch_stride, bool return_maps, bool save_probs);
std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& col_lse, const at::Tensor& col_argmax, const at::Tensor& row_sum, int64_t mode, double tau,
    double eps, bool sum_assign, int64_t key_a, int64_t key_b, int64_t noise_batch_offset,
    int64_t noise_batch_stride, const std::optional<at::Tensor>& probs);
std::tuple<at::Tensor, at::Tensor> token_distill_kl_forward(const at::Tensor& student, const at::Tensor& teacher,
                                                           int64_t start, int64_t stop, double temperature,
                                                           const std::string& reduction);
std::tuple<at::Tensor, at::Tensor> bernoulli_distill_kl_rows(const at::Tensor& student, const at::Tensor& teacher,
                                                             int64_t start, int64_t stop, double temperature,
                                                             const std::string& reduction);
}  // namespace cign_fast::cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace cpu = cign_fast::cpu;
  m.doc() = "cign_fast CPU kernels (C++, vectorised, threads from ATen's parallel_for)";
  m.def("gumbel_noise", &cpu::gumbel_noise, "Gumbel noise [B, N, S] (float32) from the two seed keys",
        py::arg("batch"), py::arg("groups"), py::arg("tokens"), py::arg("key_a"), py::arg("key_b"));
  m.def("assign_attention_forward", &cpu::assign_attention_forward,
        "(out, col_lse, col_argmax, row_sum, hard_map, soft_map, probs) of assign attention; probs: the softmax "
        "over groups [B, N, S] float32 for the backward with save_probs, else empty",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mode"), py::arg("tau"), py::arg("eps"),
        py::arg("sum_assign"), py::arg("key_a"), py::arg("key_b"), py::arg("noise_batch_offset"),
        py::arg("noise_batch_stride"), py::arg("return_maps"), py::arg("save_probs") = false);
  m.def("assign_attention_backward", &cpu::assign_attention_backward,
        "(grad_q, grad_k, grad_v) of assign attention (probs: the forward's saved softmax, or None: recomputed)",
        py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("col_lse"), py::arg("col_argmax"),
        py::arg("row_sum"), py::arg("mode"), py::arg("tau"), py::arg("eps"), py::arg("sum_assign"), py::arg("key_a"),
        py::arg("key_b"), py::arg("noise_batch_offset"), py::arg("noise_batch_stride"), py::arg("probs") = py::none());
  m.def("token_distill_kl_forward", &cpu::token_distill_kl_forward, "(loss, grad_student) of the distillation KL",
        py::arg("student"), py::arg("teacher"), py::arg("start"), py::arg("stop"), py::arg("temperature"),
        py::arg("reduction"));
  m.def("bernoulli_distill_kl_rows", &cpu::bernoulli_distill_kl_rows,
        "(per-row loss [R], grad_student) of the per-class Bernoulli distillation KL (reduction: of the gradient)",
        py::arg("student"), py::arg("teacher"), py::arg("start"), py::arg("stop"), py::arg("temperature"),
        py::arg("reduction"));
  m.def("num_threads", []() { return at::get_num_threads(); }, "threads ATen's parallel_for will use");
  m.def("kernel_isa", []() { return std::string(cpu::active_kernels().isa); },
        "instruction set of the CPU kernels in use: 'avx2' or 'generic'");
  m.def("select_kernels", [](const std::string& name) { return std::string(cpu::select_kernels(name.c_str())); },
        "use the 'avx2', 'generic' or best ('auto') CPU kernels; returns the one chosen", py::arg("name"));
}
