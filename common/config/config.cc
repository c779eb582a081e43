#include "common/config/config.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace rlhf::config {

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "string";
    case Kind::kIntList: return "list of int";
    case Kind::kFloatList: return "list of float";
    case Kind::kStringList: return "list of string";
    case Kind::kAny: return "yaml";
  }
  return "?";
}

std::string ShortestDouble(double v) {
  char buf[40];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  // Keep it a float in YAML ("1" would read back as an int, which is fine, but "1.0" says what it is).
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

Check AtLeast(double min) {
  return [min](const YAML::Node& n) -> std::string {
    if (n.as<double>() < min) return absl::StrCat("must be >= ", min);
    return "";
  };
}

Check InRange(double min, double max) {
  return [min, max](const YAML::Node& n) -> std::string {
    double v = n.as<double>();
    if (v < min || v > max) return absl::StrCat("must be in [", min, ", ", max, "]");
    return "";
  };
}

Check OneOf(std::vector<std::string> choices) {
  return [choices](const YAML::Node& n) -> std::string {
    auto v = n.as<std::string>();
    if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
      return absl::StrCat("must be one of: ", absl::StrJoin(choices, ", "));
    }
    return "";
  };
}

void Schema::Add(KeySpec spec) {
  auto it = index_.find(spec.key);
  if (it != index_.end()) {
    if (keys_[it->second].kind != spec.kind) {
      throw std::logic_error("config key declared twice with different kinds: " + spec.key);
    }
    return;
  }
  index_[spec.key] = keys_.size();
  keys_.push_back(std::move(spec));
}

const KeySpec* Schema::Find(const std::string& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &keys_[it->second];
}

namespace {

std::string Flow(const YAML::Node& n) {
  YAML::Emitter e;
  e.SetDoublePrecision(15);
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << n;
  std::string s = e.c_str();
  return s.empty() ? "\"\"" : s;
}

bool IsScalarOf(const YAML::Node& n, Kind kind) {
  if (!n.IsScalar()) return false;
  try {
    switch (kind) {
      case Kind::kBool: n.as<bool>(); return true;
      case Kind::kInt: {
        n.as<int64_t>();
        return true;
      }
      case Kind::kFloat: {
        double d = n.as<double>();
        return !std::isnan(d) || n.Scalar() == ".nan";
      }
      case Kind::kString: return true;
      default: return false;
    }
  } catch (const YAML::Exception&) {
    return false;
  }
}

// Empty string when `n` has the kind; otherwise what is wrong.
std::string KindError(const YAML::Node& n, Kind kind) {
  switch (kind) {
    case Kind::kAny: return "";
    case Kind::kBool:
    case Kind::kInt:
    case Kind::kFloat:
    case Kind::kString:
      if (IsScalarOf(n, kind)) return "";
      return absl::StrCat("expected ", KindName(kind), ", got ", Flow(n));
    case Kind::kIntList:
    case Kind::kFloatList:
    case Kind::kStringList: {
      if (!n.IsSequence()) return absl::StrCat("expected ", KindName(kind), ", got ", Flow(n));
      Kind elem = kind == Kind::kIntList ? Kind::kInt : kind == Kind::kFloatList ? Kind::kFloat : Kind::kString;
      for (size_t i = 0; i < n.size(); ++i) {
        if (!IsScalarOf(n[i], elem)) {
          return absl::StrCat("element ", i, ": expected ", KindName(elem), ", got ", Flow(n[i]));
        }
      }
      return "";
    }
  }
  return "unknown kind";
}

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string Suggest(const Schema& schema, const std::string& key) {
  std::string best;
  size_t best_d = key.size() / 3 + 2;
  for (const auto& s : schema.keys()) {
    size_t d = EditDistance(s.key, key);
    if (d < best_d) {
      best_d = d;
      best = s.key;
    }
  }
  // A key given without its section: "hidden_size" for "model.hidden_size".
  if (best.empty()) {
    for (const auto& s : schema.keys()) {
      if (absl::EndsWith(s.key, "." + key)) return s.key;
    }
  }
  return best;
}

// Sets root[a][b][c] = value for key "a.b.c".
void SetPath(YAML::Node root, const std::string& key, const YAML::Node& value) {
  std::vector<std::string> parts = absl::StrSplit(key, '.');
  // yaml-cpp nodes are references; walk by re-binding through a vector of nodes.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsMap()) {
      next = YAML::Node(YAML::NodeType::Map);
      chain.back()[parts[i]] = next;
      next = chain.back()[parts[i]];
    }
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value;
}

// Collects dotted leaf paths of a user-supplied tree. A declared key stops the descent (its value may be
// a map for kAny keys).
absl::Status Walk(const Schema& schema, const YAML::Node& node, const std::string& path,
                  std::vector<std::pair<std::string, YAML::Node>>* out) {
  if (!path.empty() && schema.Find(path) != nullptr) {
    out->emplace_back(path, node);
    return absl::OkStatus();
  }
  if (node.IsMap()) {
    for (const auto& kv : node) {
      std::string k;
      try {
        k = kv.first.as<std::string>();
      } catch (const YAML::Exception&) {
        return absl::InvalidArgumentError(absl::StrCat("config key under '", path, "' is not a string"));
      }
      RETURN_IF_ERROR(Walk(schema, kv.second, path.empty() ? k : path + "." + k, out));
    }
    return absl::OkStatus();
  }
  if (path.empty()) {
    if (node.IsNull()) return absl::OkStatus();
    return absl::InvalidArgumentError("config: the top level must be a mapping of sections");
  }
  std::string hint = Suggest(schema, path);
  return absl::InvalidArgumentError(absl::StrCat("unknown config key '", path, "'",
                                                 hint.empty() ? "" : absl::StrCat(" (did you mean '", hint, "'?)"),
                                                 "; `rlhf config-keys` lists every key"));
}

}  // namespace

absl::StatusOr<Config> Config::Load(const Schema& schema, const std::string& file,
                                    const std::vector<std::string>& overrides) {
  std::string text;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat("config file '", file, "' cannot be opened: check the path"));
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  auto c = FromYaml(schema, text, overrides);
  if (!c.ok() && !file.empty()) return Annotate(c.status(), file);
  return c;
}

absl::StatusOr<Config> Config::FromYaml(const Schema& schema, const std::string& yaml,
                                        const std::vector<std::string>& overrides) {
  YAML::Node user;
  try {
    user = yaml.empty() ? YAML::Node(YAML::NodeType::Map) : YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("YAML syntax error at line ", e.mark.line + 1, ": ", e.msg));
  }
  if (user.IsNull()) user = YAML::Node(YAML::NodeType::Map);
  std::vector<std::pair<std::string, YAML::Node>> given;
  RETURN_IF_ERROR(Walk(schema, user, "", &given));
  for (const auto& o : overrides) {
    auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--set '", o, "': expected key=value"));
    }
    std::string key = o.substr(0, eq);
    if (schema.Find(key) == nullptr) {
      std::string hint = Suggest(schema, key);
      return absl::InvalidArgumentError(absl::StrCat("--set: unknown config key '", key, "'",
                                                     hint.empty() ? "" : absl::StrCat(" (did you mean '", hint, "'?)")));
    }
    YAML::Node v;
    if (schema.Find(key)->kind == Kind::kString) {
      v = YAML::Node(o.substr(eq + 1));  // string keys take the text as it is ("[1, 2]", "a: b", "")
    } else {
      try {
        v = YAML::Load(o.substr(eq + 1));
      } catch (const YAML::Exception& e) {
        return absl::InvalidArgumentError(absl::StrCat("--set ", key, ": cannot parse value: ", e.msg));
      }
      if (v.IsNull()) v = YAML::Node(std::string());
    }
    given.emplace_back(key, v);
  }
  auto root = YAML::Node(YAML::NodeType::Map);
  std::map<std::string, YAML::Node> values;
  for (const auto& s : schema.keys()) values[s.key] = YAML::Clone(s.default_value);
  for (const auto& [key, v] : given) values[key] = YAML::Clone(v);
  for (const auto& s : schema.keys()) {
    const YAML::Node& v = values[s.key];
    std::string err = KindError(v, s.kind);
    if (err.empty() && s.check) {
      try {
        err = s.check(v);
      } catch (const YAML::Exception& e) {
        err = e.msg;
      }
    }
    if (!err.empty()) return absl::InvalidArgumentError(absl::StrCat("config key '", s.key, "': ", err));
    SetPath(root, s.key, v);
  }
  return Config(std::make_shared<const Schema>(schema), root);
}

YAML::Node Config::Node(const std::string& key) const {
  if (schema_->Find(key) == nullptr) throw std::logic_error("config key not declared in the schema: " + key);
  std::vector<std::string> parts = absl::StrSplit(key, '.');
  std::vector<YAML::Node> chain{root_};
  for (const auto& p : parts) chain.push_back(chain.back()[p]);
  return chain.back();
}

template <>
YAML::Node Config::Get<YAML::Node>(const std::string& key) const {
  return YAML::Clone(Node(key));
}

std::string Config::ToYaml() const {
  YAML::Emitter e;
  e.SetDoublePrecision(15);
  e << root_;
  return std::string(e.c_str()) + "\n";
}

absl::StatusOr<Config> Config::With(const std::vector<std::string>& overrides) const {
  return FromYaml(*schema_, ToYaml(), overrides);
}

std::string Schema::Markdown() const {
  std::ostringstream out;
  out << "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const auto& s : keys_) {
    std::string def = Flow(s.default_value);
    out << "| `" << s.key << "` | " << KindName(s.kind) << " | `" << def << "` | " << s.doc << " |\n";
  }
  return out.str();
}

}  // namespace rlhf::config
