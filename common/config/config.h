// Configuration: YAML files plus `--set key=value` overrides, checked against a schema of documented keys.
//
// Every key a command reads is declared once, in the Section<T> of the config struct that holds it
// (name, type, default taken from the struct's initialiser, one-line doc, optional check). Loading
// resolves defaults <- file <- overrides, rejects unknown keys (with a suggestion), wrong types and values
// out of range, naming the key; then each struct reads its fields. Resolved configs are immutable.
//
// Thread-safety: Schema and Config are immutable after construction and safe to share.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace rlhf::config {

enum class Kind { kBool, kInt, kFloat, kString, kIntList, kFloatList, kStringList, kAny };
const char* KindName(Kind kind);

// Extra validation of a value already known to have the right kind: returns "" when fine, else what is
// wrong (e.g. "must be >= 1").
using Check = std::function<std::string(const YAML::Node&)>;
Check AtLeast(double min);
// The shortest decimal text that reads back as exactly `v`.
std::string ShortestDouble(double v);
Check InRange(double min, double max);
Check OneOf(std::vector<std::string> choices);

struct KeySpec {
  std::string key;       // dotted path, e.g. "model.hidden_size"
  Kind kind = Kind::kString;
  YAML::Node default_value;
  std::string doc;       // one line: what it does, units, special values
  Check check;           // may be empty
};

class Schema {
 public:
  // Adds a key; a key declared twice must agree in kind (sections shared by several commands).
  void Add(KeySpec spec);
  const KeySpec* Find(const std::string& key) const;
  const std::vector<KeySpec>& keys() const { return keys_; }
  // Markdown table of every key: name, type, default, doc.
  std::string Markdown() const;

 private:
  std::vector<KeySpec> keys_;
  std::map<std::string, size_t> index_;
};

class Config {
 public:
  // Resolves a config from the schema's defaults, then `file` (may be empty), then `overrides`
  // ("a.b=value": value parsed as YAML, except for string keys, which take the text as it is). Fails with INVALID_ARGUMENT naming the key on unknown keys,
  // wrong types, or values a check rejects; NOT_FOUND if the file does not exist.
  static absl::StatusOr<Config> Load(const Schema& schema, const std::string& file,
                                     const std::vector<std::string>& overrides);
  // Same, from YAML text instead of a file (tests, embedded configs).
  static absl::StatusOr<Config> FromYaml(const Schema& schema, const std::string& yaml,
                                         const std::vector<std::string>& overrides);

  // Typed reads. `key` must be declared in the schema (a programming error otherwise: throws).
  template <typename V>
  V Get(const std::string& key) const;
  YAML::Node Node(const std::string& key) const;

  // The resolved config as YAML (every declared key, defaults included).
  std::string ToYaml() const;
  // This config with `overrides` applied on top (same rules as Load).
  absl::StatusOr<Config> With(const std::vector<std::string>& overrides) const;

 private:
  Config(std::shared_ptr<const Schema> schema, YAML::Node root) : schema_(std::move(schema)), root_(root) {}
  std::shared_ptr<const Schema> schema_;
  YAML::Node root_;
};

// Binds the fields of a config struct to keys under a prefix, so that one declaration gives the schema
// (with defaults from T{}), the docs and the reader.
//
//   struct MetricsConfig {
//     int64_t port = 0;  // Prometheus port, 0 = off
//     static const Section<MetricsConfig>& Spec();
//   };
//   Section<MetricsConfig> s("metrics"); s.Add("port", &MetricsConfig::port, "Prometheus port; 0 = off");
template <typename T>
class Section {
 public:
  explicit Section(std::string prefix) : prefix_(std::move(prefix)) {}

  template <typename V>
  Section& Add(const std::string& name, V T::*member, std::string doc, Check check = nullptr) {
    T defaults{};
    KeySpec spec;
    spec.key = prefix_.empty() ? name : prefix_ + "." + name;
    spec.kind = KindOf<V>();
    spec.default_value = ToNode(defaults.*member);
    spec.doc = std::move(doc);
    spec.check = std::move(check);
    std::string key = spec.key;
    specs_.push_back(std::move(spec));
    readers_.push_back([key, member](const Config& c, T& t) { t.*member = c.Get<V>(key); });
    return *this;
  }

  // A string key whose value is one of `choices` (checked when the config is validated), read into an enum
  // field: options are parsed once, here, never compared as strings where they are used. The default is
  // the first name whose value is the field's default; several names may map to one value (aliases).
  template <typename E>
  Section& AddChoice(const std::string& name, E T::*member, std::vector<std::pair<std::string, E>> choices,
                     std::string doc) {
    T defaults{};
    KeySpec spec;
    spec.key = prefix_.empty() ? name : prefix_ + "." + name;
    spec.kind = Kind::kString;
    std::vector<std::string> names;
    for (const auto& [n, v] : choices) {
      names.push_back(n);
      if (spec.default_value.IsNull() && v == defaults.*member) spec.default_value = YAML::Node(n);
    }
    spec.doc = std::move(doc);
    spec.check = OneOf(names);
    std::string key = spec.key;
    specs_.push_back(std::move(spec));
    readers_.push_back([key, member, choices](const Config& c, T& t) {
      const auto value = c.Get<std::string>(key);
      for (const auto& [n, v] : choices) {
        if (n == value) t.*member = v;
      }
    });
    return *this;
  }

  // Overrides the default of the key added last (sections whose prefixes want different defaults).
  template <typename V>
  Section& Default(const V& value) {
    specs_.back().default_value = ToNode(value);
    return *this;
  }

  void Register(Schema& schema) const {
    for (const auto& s : specs_) schema.Add(s);
  }
  T Read(const Config& config) const {
    T t{};
    for (const auto& r : readers_) r(config, t);
    return t;
  }
  const std::string& prefix() const { return prefix_; }

 private:
  template <typename V>
  static constexpr Kind KindOf() {
    if constexpr (std::is_same_v<V, bool>) return Kind::kBool;
    else if constexpr (std::is_integral_v<V>) return Kind::kInt;
    else if constexpr (std::is_floating_point_v<V>) return Kind::kFloat;
    else if constexpr (std::is_same_v<V, std::string>) return Kind::kString;
    else if constexpr (std::is_same_v<V, std::vector<std::string>>) return Kind::kStringList;
    else if constexpr (std::is_same_v<V, std::vector<int64_t>> || std::is_same_v<V, std::vector<int>>) return Kind::kIntList;
    else if constexpr (std::is_same_v<V, std::vector<double>>) return Kind::kFloatList;
    else if constexpr (std::is_same_v<V, YAML::Node>) return Kind::kAny;
    else static_assert(sizeof(V) == 0, "unsupported config field type");
  }

  template <typename V>
  static YAML::Node ToNode(const V& v) {
    if constexpr (std::is_floating_point_v<V>) {
      return YAML::Node(ShortestDouble(static_cast<double>(v)));  // 0.003, not 0.0030000000000000001
    } else {
      return YAML::Node(v);
    }
  }

  std::string prefix_;
  std::vector<KeySpec> specs_;
  std::vector<std::function<void(const Config&, T&)>> readers_;
};

template <typename V>
V Config::Get(const std::string& key) const {
  return Node(key).as<V>();
}
template <>
YAML::Node Config::Get<YAML::Node>(const std::string& key) const;

}  // namespace rlhf::config
