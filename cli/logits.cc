// rlhf logits: the float32 logits of one token sequence, as a safetensors file (tensor "logits", [T, V]).
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "cli/command.h"
#include "common/model/checkpoint.h"
#include "common/model/safetensors.h"

namespace rlhf::cli {

namespace {
struct LogitsConfig {
  std::string model;             // model folder
  std::vector<int64_t> ids;      // token ids of the sequence
  std::string out;               // output .safetensors file
  std::string dtype;             // compute dtype: "" = the checkpoint's, float32 or bfloat16
  static const config::Section<LogitsConfig>& Spec() {
    static const auto* s = [] {
      auto* s = new config::Section<LogitsConfig>("logits");
      s->Add("model", &LogitsConfig::model, "model folder (Hugging Face layout)");
      s->Add("ids", &LogitsConfig::ids, "token ids of the sequence");
      s->Add("out", &LogitsConfig::out, "output safetensors file: tensor 'logits', float32 [T, V]");
      s->Add("dtype", &LogitsConfig::dtype, "compute dtype: \"\" = the checkpoint's, float32, bfloat16",
             config::OneOf({"", "float32", "bfloat16", "f32", "bf16"}));
      return s;
    }();
    return *s;
  }
};
}  // namespace

Command LogitsCommand() {
  Command c;
  c.name = "logits";
  c.help = "compute the float32 logits [T, V] of a token sequence and save them as safetensors";
  c.add_sections = [](config::Schema& s) { LogitsConfig::Spec().Register(s); };
  c.flags = {
      {"model", "logits.model", "model folder"},
      {"ids", "logits.ids", "comma-separated token ids", false, true},
      {"out", "logits.out", "output .safetensors file"},
      {"dtype", "logits.dtype", "float32 | bfloat16 (default: the checkpoint's)"},
  };
  c.body = [](const Context& ctx) -> absl::Status {
    auto cfg = LogitsConfig::Spec().Read(ctx.config);
    if (cfg.model.empty()) return absl::InvalidArgumentError("no model: give --model DIR");
    if (cfg.out.empty()) return absl::InvalidArgumentError("no output file: give --out F.safetensors");
    if (cfg.ids.empty()) return absl::InvalidArgumentError("no token ids: give --ids 1,2,3");
    ASSIGN_OR_RETURN(auto load, model::LoadOptionsForDtype(cfg.dtype));
    ASSIGN_OR_RETURN(auto m, model::LoadModel(cfg.model, load));
    const auto& hc = m->config();
    if (hc.head != model::Head::kCausalLM) {
      return absl::InvalidArgumentError(absl::StrCat(cfg.model, " is a ", model::ArchitectureString(hc.arch, hc.head),
                                                     ": logits need a ForCausalLM model"));
    }
    for (int64_t id : cfg.ids) {
      if (id < 0 || id >= hc.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ", hc.vocab_size, ")"));
      }
    }
    torch::NoGradGuard no_grad;
    auto ids = torch::tensor(cfg.ids, torch::kInt64).unsqueeze(0);
    auto logits = m->Logits(m->Hidden(ids)).squeeze(0).to(torch::kFloat32).contiguous();  // [T, V]
    std::vector<int64_t> shape(logits.sizes().begin(), logits.sizes().end());
    RETURN_IF_ERROR(model::WriteSafetensors(cfg.out, {{"logits", model::StDType::kF32, shape, logits.data_ptr()}},
                                            {{"format", "pt"}}));
    spdlog::info("logits: [{}, {}] written to {}", shape[0], shape[1], cfg.out);
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli
