// rlhf data check: validates a dataset and prints counts per field and split (and token lengths when a
// model folder with a tokenizer is given).
#include <cstdio>

#include "cli/command.h"
#include "common/data/dataset.h"
#include "common/text/chat_template.h"
#include "common/text/model_text.h"
#include "common/text/tokenizer.h"

namespace rlhf::cli {

namespace {
struct DataCheckConfig {
  std::string model;  // model folder whose tokenizer (and chat template) measure the examples; "" = none
  static const config::Section<DataCheckConfig>& Spec() {
    static const auto* s = [] {
      auto* s = new config::Section<DataCheckConfig>("check");
      s->Add("model", &DataCheckConfig::model, "model folder (tokenizer, chat template) to measure token lengths; \"\" = none");
      return s;
    }();
    return *s;
  }
};
}  // namespace

Command DataCheckCommand() {
  Command c;
  c.name = "check";
  c.help = "validate a dataset and print counts per field and split";
  c.add_sections = [](config::Schema& s) {
    data::DataConfig::Spec().Register(s);
    DataCheckConfig::Spec().Register(s);
  };
  c.flags = {{"data", "data.path", "JSONL file"},
             {"kind", "data.kind", "dataset kind (default auto)"},
             {"strict", "data.strict", "false: skip and count bad lines"},
             {"model", "check.model", "model folder to measure token lengths"}};
  c.body = [](const Context& ctx) -> absl::Status {
    auto cfg = data::DataConfig::Spec().Read(ctx.config);
    auto check = DataCheckConfig::Spec().Read(ctx.config);
    data::LoadStats stats;
    ASSIGN_OR_RETURN(auto ds, data::Dataset::Load(cfg, &stats));
    std::printf("dataset %s: kind %s\n", cfg.path.c_str(), data::KindName(ds.kind()));
    std::printf("lines %lld, loaded %lld, skipped %lld\n", static_cast<long long>(stats.lines),
                static_cast<long long>(stats.loaded), static_cast<long long>(stats.skipped));
    std::printf("split: train %lld, heldout %lld (heldout_fraction %.3g, by prompt hash)\n",
                static_cast<long long>(stats.train), static_cast<long long>(stats.heldout), cfg.heldout_fraction);
    std::printf("fields:");
    for (const auto& [k, n] : stats.fields) std::printf(" %s %lld", k.c_str(), static_cast<long long>(n));
    std::printf("\n");
    for (const auto& e : stats.first_errors) std::printf("skipped: %s\n", e.c_str());
    if (!check.model.empty()) {
      ASSIGN_OR_RETURN(auto mt, text::ModelText::Load(check.model));
      int64_t n = 0, prompt_total = 0, prompt_max = 0;
      for (const auto& e : ds.examples()) {
        auto ids = mt.EncodePrompt(e.prompt);  // as every role encodes it
        if (!ids.ok()) return Annotate(ids.status(), absl::StrCat(cfg.path, ":", e.line));
        int64_t len = static_cast<int64_t>(ids->size());
        prompt_total += len;
        prompt_max = std::max(prompt_max, len);
        ++n;
      }
      std::printf("prompt tokens (%s): mean %.1f, max %lld\n", check.model.c_str(),
                  static_cast<double>(prompt_total) / std::max<int64_t>(1, n), static_cast<long long>(prompt_max));
    }
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli
