#include "common/text/chat_template.h"

#include <unicode/unistr.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <optional>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <variant>
#include <vector>

#include "common/text/utf8.h"

namespace rlhf::text {

using ojson = nlohmann::ordered_json;

namespace jinja {

// ============================================================================================ values
struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered, as Python dicts
using Args = std::vector<Value>;
using Kwargs = std::vector<std::pair<std::string, Value>>;

struct Value {
  enum Type { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace, kFunction };
  Type type = kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // also the attributes of a namespace
  std::function<Value(Args&, Kwargs&)> fn;
  std::string undefined_name;  // what was undefined, for messages

  static Value None() { Value v; v.type = kNone; return v; }
  static Value Bool(bool x) { Value v; v.type = kBool; v.b = x; return v; }
  static Value Int(int64_t x) { Value v; v.type = kInt; v.i = x; return v; }
  static Value Float(double x) { Value v; v.type = kFloat; v.f = x; return v; }
  static Value Str(std::string x) { Value v; v.type = kString; v.s = std::move(x); return v; }
  static Value MakeList(List l) { Value v; v.type = kList; v.list = std::make_shared<List>(std::move(l)); return v; }
  static Value MakeDict(Dict d) { Value v; v.type = kDict; v.dict = std::make_shared<Dict>(std::move(d)); return v; }
  static Value Undefined(std::string name) { Value v; v.undefined_name = std::move(name); return v; }
  static Value Function(std::function<Value(Args&, Kwargs&)> f) { Value v; v.type = kFunction; v.fn = std::move(f); return v; }

  const Value* Find(const std::string& key) const {
    if (!dict) return nullptr;
    for (const auto& [k, v] : *dict) {
      if (k == key) return &v;
    }
    return nullptr;
  }
};

struct TemplateError {
  int line;
  std::string message;
};
[[noreturn]] void Fail(int line, const std::string& msg) { throw TemplateError{line, msg}; }

const char* TypeName(const Value& v) {
  switch (v.type) {
    case Value::kUndefined: return "undefined";
    case Value::kNone: return "none";
    case Value::kBool: return "boolean";
    case Value::kInt: return "integer";
    case Value::kFloat: return "float";
    case Value::kString: return "string";
    case Value::kList: return "list";
    case Value::kDict: return "dict";
    case Value::kNamespace: return "namespace";
    case Value::kFunction: return "function";
  }
  return "?";
}

// Python strings index and count code points, not bytes.
std::vector<std::string> CodePoints(const std::string& s) { return SplitCodePoints(s); }

bool Truthy(const Value& v) {
  switch (v.type) {
    case Value::kUndefined:
    case Value::kNone: return false;
    case Value::kBool: return v.b;
    case Value::kInt: return v.i != 0;
    case Value::kFloat: return v.f != 0;
    case Value::kString: return !v.s.empty();
    case Value::kList: return !v.list->empty();
    case Value::kDict: return !v.dict->empty();
    default: return true;
  }
}

std::string PyFloat(double f) {
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  if (std::isnan(f)) return "nan";
  char buf[40];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*g", p, f);
    if (std::strtod(buf, nullptr) == f) break;
  }
  std::string s = buf;
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string Repr(const Value& v);
// str() of a value, as Python prints it.
std::string Str(const Value& v) {
  switch (v.type) {
    case Value::kUndefined: return "";
    case Value::kNone: return "None";
    case Value::kBool: return v.b ? "True" : "False";
    case Value::kInt: return std::to_string(v.i);
    case Value::kFloat: return PyFloat(v.f);
    case Value::kString: return v.s;
    default: return Repr(v);
  }
}
std::string Repr(const Value& v) {
  switch (v.type) {
    case Value::kString: {
      std::string out = "'";
      for (char c : v.s) {
        if (c == '\'') out += "\\'";
        else if (c == '\\') out += "\\\\";
        else if (c == '\n') out += "\\n";
        else out += c;
      }
      return out + "'";
    }
    case Value::kList: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + Repr((*v.list)[k]);
      return out + "]";
    }
    case Value::kDict:
    case Value::kNamespace: {
      std::string out = "{";
      size_t k = 0;
      for (const auto& [key, val] : *v.dict) out += (k++ ? ", '" : "'") + key + "': " + Repr(val);
      return out + "}";
    }
    default: return Str(v);
  }
}

Value FromJson(const ojson& j) {
  switch (j.type()) {
    case ojson::value_t::null: return Value::None();
    case ojson::value_t::boolean: return Value::Bool(j.get<bool>());
    case ojson::value_t::number_integer:
    case ojson::value_t::number_unsigned: return Value::Int(j.get<int64_t>());
    case ojson::value_t::number_float: return Value::Float(j.get<double>());
    case ojson::value_t::string: return Value::Str(j.get<std::string>());
    case ojson::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(FromJson(e));
      return Value::MakeList(std::move(l));
    }
    case ojson::value_t::object: {
      Dict d;
      for (const auto& [k, e] : j.items()) d.emplace_back(k, FromJson(e));
      return Value::MakeDict(std::move(d));
    }
    default: return Value::None();
  }
}

// json.dumps(x, ensure_ascii=False) with optional indent, as transformers' tojson filter.
void ToJson(const Value& v, int indent, int depth, std::string* out, int line) {
  auto nl = [&](int d) {
    if (indent > 0) *out += "\n" + std::string(static_cast<size_t>(indent * d), ' ');
  };
  switch (v.type) {
    case Value::kNone:
    case Value::kUndefined: *out += "null"; return;
    case Value::kBool: *out += v.b ? "true" : "false"; return;
    case Value::kInt: *out += std::to_string(v.i); return;
    case Value::kFloat: *out += PyFloat(v.f); return;
    case Value::kString: *out += ojson(v.s).dump(-1, ' ', false); return;
    case Value::kList: {
      if (v.list->empty()) { *out += "[]"; return; }
      *out += "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) *out += indent > 0 ? "," : ", ";
        nl(depth + 1);
        ToJson((*v.list)[k], indent, depth + 1, out, line);
      }
      nl(depth);
      *out += "]";
      return;
    }
    case Value::kDict:
    case Value::kNamespace: {
      if (v.dict->empty()) { *out += "{}"; return; }
      *out += "{";
      size_t k = 0;
      for (const auto& [key, val] : *v.dict) {
        if (k++) *out += indent > 0 ? "," : ", ";
        nl(depth + 1);
        *out += ojson(key).dump(-1, ' ', false) + ": ";
        ToJson(val, indent, depth + 1, out, line);
      }
      nl(depth);
      *out += "}";
      return;
    }
    case Value::kFunction: Fail(line, "tojson: a function is not JSON");
  }
}

bool Equal(const Value& a, const Value& b) {
  auto num = [](const Value& v) { return v.type == Value::kInt || v.type == Value::kFloat || v.type == Value::kBool; };
  if (num(a) && num(b)) {
    double x = a.type == Value::kFloat ? a.f : a.type == Value::kInt ? static_cast<double>(a.i) : a.b;
    double y = b.type == Value::kFloat ? b.f : b.type == Value::kInt ? static_cast<double>(b.i) : b.b;
    return x == y;
  }
  if (a.type != b.type) return (a.type == Value::kNone || a.type == Value::kUndefined) &&
                                (b.type == Value::kNone || b.type == Value::kUndefined) && a.type == b.type;
  switch (a.type) {
    case Value::kNone: return true;
    case Value::kString: return a.s == b.s;
    case Value::kList: {
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k) {
        if (!Equal((*a.list)[k], (*b.list)[k])) return false;
      }
      return true;
    }
    case Value::kDict: {
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = b.Find(k);
        if (!o || !Equal(v, *o)) return false;
      }
      return true;
    }
    default: return false;
  }
}

// ====================================================================================== expressions
struct Context;

struct Expr {
  virtual ~Expr() = default;
  virtual Value Eval(Context& c) const = 0;
  int line = 0;
};
using ExprPtr = std::shared_ptr<Expr>;

struct Context {
  std::vector<std::vector<std::pair<std::string, Value>>> scopes;
  std::string out;
  Value Lookup(const std::string& name) const {
    for (auto s = scopes.rbegin(); s != scopes.rend(); ++s) {
      for (auto it = s->rbegin(); it != s->rend(); ++it) {
        if (it->first == name) return it->second;
      }
    }
    return Value::Undefined(name);
  }
  void Set(const std::string& name, Value v) {
    auto& s = scopes.back();
    for (auto& [k, x] : s) {
      if (k == name) { x = std::move(v); return; }
    }
    s.emplace_back(name, std::move(v));
  }
};

struct Literal : Expr {
  Value v;
  Value Eval(Context&) const override { return v; }
};
struct Name : Expr {
  std::string name;
  Value Eval(Context& c) const override { return c.Lookup(name); }
};
struct ListExpr : Expr {
  std::vector<ExprPtr> items;
  Value Eval(Context& c) const override {
    List l;
    for (const auto& e : items) l.push_back(e->Eval(c));
    return Value::MakeList(std::move(l));
  }
};
struct DictExpr : Expr {
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
  Value Eval(Context& c) const override {
    Dict d;
    for (const auto& [k, v] : items) d.emplace_back(Str(k->Eval(c)), v->Eval(c));
    return Value::MakeDict(std::move(d));
  }
};

Value GetAttr(const Value& obj, const std::string& name, int line);

struct Attr : Expr {
  ExprPtr obj;
  std::string name;
  Value Eval(Context& c) const override { return GetAttr(obj->Eval(c), name, line); }
};

int64_t NormIndex(int64_t i, int64_t n) { return i < 0 ? i + n : i; }

struct Item : Expr {
  ExprPtr obj, index;
  Value Eval(Context& c) const override {
    Value o = obj->Eval(c), k = index->Eval(c);
    if (o.type == Value::kUndefined) Fail(line, "'" + o.undefined_name + "' is undefined");
    if (k.type == Value::kString) return GetAttr(o, k.s, line);
    if (k.type != Value::kInt) Fail(line, std::string("index must be an integer or a string, not ") + TypeName(k));
    if (o.type == Value::kList) {
      int64_t i = NormIndex(k.i, static_cast<int64_t>(o.list->size()));
      if (i < 0 || i >= static_cast<int64_t>(o.list->size())) return Value::Undefined("list index");
      return (*o.list)[i];
    }
    if (o.type == Value::kString) {
      auto cps = CodePoints(o.s);
      int64_t i = NormIndex(k.i, static_cast<int64_t>(cps.size()));
      if (i < 0 || i >= static_cast<int64_t>(cps.size())) return Value::Undefined("string index");
      return Value::Str(cps[i]);
    }
    Fail(line, std::string("cannot index a ") + TypeName(o));
  }
};

struct SliceExpr : Expr {
  ExprPtr obj, start, stop, step;
  Value Eval(Context& c) const override {
    Value o = obj->Eval(c);
    auto opt = [&](const ExprPtr& e) -> std::optional<int64_t> {
      if (!e) return std::nullopt;
      Value v = e->Eval(c);
      if (v.type == Value::kNone) return std::nullopt;
      if (v.type != Value::kInt) Fail(line, "slice bounds must be integers");
      return v.i;
    };
    auto st = opt(step).value_or(1);
    if (st == 0) Fail(line, "slice step cannot be zero");
    std::vector<std::string> cps;
    if (o.type == Value::kString) cps = CodePoints(o.s);
    int64_t n = o.type == Value::kList ? static_cast<int64_t>(o.list->size())
                : o.type == Value::kString ? static_cast<int64_t>(cps.size())
                                           : (Fail(line, std::string("cannot slice a ") + TypeName(o)), 0);
    auto clampi = [&](std::optional<int64_t> x, int64_t dflt) {
      if (!x) return dflt;
      int64_t v = *x < 0 ? *x + n : *x;
      if (st > 0) return std::clamp<int64_t>(v, 0, n);
      return std::clamp<int64_t>(v, -1, n - 1);
    };
    int64_t b = clampi(opt(start), st > 0 ? 0 : n - 1), e = clampi(opt(stop), st > 0 ? n : -1);
    std::vector<int64_t> idx;
    for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(i);
    if (o.type == Value::kString) {
      std::string s;
      for (auto i : idx) s += cps[i];
      return Value::Str(s);
    }
    List l;
    for (auto i : idx) l.push_back((*o.list)[i]);
    return Value::MakeList(std::move(l));
  }
};

struct Call : Expr {
  ExprPtr fn;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  Value Eval(Context& c) const override {
    Value f = fn->Eval(c);
    if (f.type != Value::kFunction) Fail(line, std::string("cannot call a ") + TypeName(f) +
                                                   (f.type == Value::kUndefined ? " ('" + f.undefined_name + "')" : ""));
    Args a;
    for (const auto& e : args) a.push_back(e->Eval(c));
    Kwargs k;
    for (const auto& [n, e] : kwargs) k.emplace_back(n, e->Eval(c));
    try {
      return f.fn(a, k);
    } catch (const std::string& msg) {
      Fail(line, msg);
    }
  }
};

Value Arith(const std::string& op, const Value& a, const Value& b, int line) {
  if (op == "~") return Value::Str(Str(a) + Str(b));
  if (op == "+" && a.type == Value::kString && b.type == Value::kString) return Value::Str(a.s + b.s);
  if (op == "+" && a.type == Value::kList && b.type == Value::kList) {
    List l = *a.list;
    l.insert(l.end(), b.list->begin(), b.list->end());
    return Value::MakeList(std::move(l));
  }
  if (op == "*" && a.type == Value::kString && b.type == Value::kInt) {
    std::string s;
    for (int64_t k = 0; k < b.i; ++k) s += a.s;
    return Value::Str(s);
  }
  auto isnum = [](const Value& v) { return v.type == Value::kInt || v.type == Value::kFloat || v.type == Value::kBool; };
  if (!isnum(a) || !isnum(b)) {
    Fail(line, std::string("unsupported operand types for ") + op + ": " + TypeName(a) + " and " + TypeName(b));
  }
  auto asf = [](const Value& v) { return v.type == Value::kFloat ? v.f : v.type == Value::kInt ? static_cast<double>(v.i) : v.b; };
  auto asi = [](const Value& v) { return v.type == Value::kInt ? v.i : static_cast<int64_t>(v.b); };
  bool ints = a.type != Value::kFloat && b.type != Value::kFloat;
  if (op == "/") {
    if (asf(b) == 0) Fail(line, "division by zero");
    return Value::Float(asf(a) / asf(b));
  }
  if (ints) {
    int64_t x = asi(a), y = asi(b);
    if (op == "+") return Value::Int(x + y);
    if (op == "-") return Value::Int(x - y);
    if (op == "*") return Value::Int(x * y);
    if (y == 0) Fail(line, "division by zero");
    int64_t q = x / y, r = x % y;
    if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;  // Python floor semantics
    if (op == "//") return Value::Int(q);
    if (op == "%") return Value::Int(r);
  } else {
    double x = asf(a), y = asf(b);
    if (op == "+") return Value::Float(x + y);
    if (op == "-") return Value::Float(x - y);
    if (op == "*") return Value::Float(x * y);
    if (op == "//") return Value::Float(std::floor(x / y));
    if (op == "%") return Value::Float(x - y * std::floor(x / y));
  }
  Fail(line, "unknown operator " + op);
}

bool Contains(const Value& container, const Value& item, int line) {
  switch (container.type) {
    case Value::kString:
      if (item.type != Value::kString) Fail(line, "'in <string>' requires a string on the left");
      return container.s.find(item.s) != std::string::npos;
    case Value::kList:
      for (const auto& v : *container.list) {
        if (Equal(v, item)) return true;
      }
      return false;
    case Value::kDict: return item.type == Value::kString && container.Find(item.s) != nullptr;
    default: Fail(line, std::string("'in' needs a string, list or dict, not ") + TypeName(container));
  }
}

int Compare(const Value& a, const Value& b, int line) {
  if (a.type == Value::kString && b.type == Value::kString) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  auto isnum = [](const Value& v) { return v.type == Value::kInt || v.type == Value::kFloat || v.type == Value::kBool; };
  if (isnum(a) && isnum(b)) {
    double x = a.type == Value::kFloat ? a.f : a.type == Value::kInt ? static_cast<double>(a.i) : a.b;
    double y = b.type == Value::kFloat ? b.f : b.type == Value::kInt ? static_cast<double>(b.i) : b.b;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  Fail(line, std::string("cannot compare ") + TypeName(a) + " and " + TypeName(b));
}

struct Binary : Expr {
  std::string op;
  ExprPtr a, b;
  Value Eval(Context& c) const override {
    if (op == "and") {
      Value x = a->Eval(c);
      return Truthy(x) ? b->Eval(c) : x;
    }
    if (op == "or") {
      Value x = a->Eval(c);
      return Truthy(x) ? x : b->Eval(c);
    }
    Value x = a->Eval(c), y = b->Eval(c);
    if (op == "==") return Value::Bool(Equal(x, y));
    if (op == "!=") return Value::Bool(!Equal(x, y));
    if (op == "<") return Value::Bool(Compare(x, y, line) < 0);
    if (op == ">") return Value::Bool(Compare(x, y, line) > 0);
    if (op == "<=") return Value::Bool(Compare(x, y, line) <= 0);
    if (op == ">=") return Value::Bool(Compare(x, y, line) >= 0);
    if (op == "in") return Value::Bool(Contains(y, x, line));
    if (op == "not in") return Value::Bool(!Contains(y, x, line));
    return Arith(op, x, y, line);
  }
};

struct Unary : Expr {
  std::string op;
  ExprPtr a;
  Value Eval(Context& c) const override {
    Value x = a->Eval(c);
    if (op == "not") return Value::Bool(!Truthy(x));
    if (op == "-") return Arith("-", Value::Int(0), x, line);
    return x;
  }
};

struct Conditional : Expr {
  ExprPtr cond, yes, no;
  Value Eval(Context& c) const override {
    if (Truthy(cond->Eval(c))) return yes->Eval(c);
    return no ? no->Eval(c) : Value::Undefined("else branch");
  }
};

bool RunTest(const std::string& name, const Value& v, const std::vector<Value>& args, int line) {
  if (name == "defined") return v.type != Value::kUndefined;
  if (name == "undefined") return v.type == Value::kUndefined;
  if (name == "none") return v.type == Value::kNone;
  if (name == "string") return v.type == Value::kString;
  if (name == "number") return v.type == Value::kInt || v.type == Value::kFloat;
  if (name == "integer") return v.type == Value::kInt;
  if (name == "float") return v.type == Value::kFloat;
  if (name == "boolean") return v.type == Value::kBool;
  if (name == "true") return v.type == Value::kBool && v.b;
  if (name == "false") return v.type == Value::kBool && !v.b;
  if (name == "mapping") return v.type == Value::kDict;
  if (name == "sequence" || name == "iterable") {
    return v.type == Value::kList || v.type == Value::kString || v.type == Value::kDict;
  }
  if (name == "callable") return v.type == Value::kFunction;
  if (name == "equalto" || name == "eq" || name == "sameas") return !args.empty() && Equal(v, args[0]);
  if (name == "odd") return v.type == Value::kInt && v.i % 2 != 0;
  if (name == "even") return v.type == Value::kInt && v.i % 2 == 0;
  Fail(line, "unsupported test 'is " + name + "'");
}

struct Test : Expr {
  ExprPtr a;
  std::string name;
  std::vector<ExprPtr> args;
  bool negate = false;
  Value Eval(Context& c) const override {
    Value x = a->Eval(c);
    std::vector<Value> av;
    for (const auto& e : args) av.push_back(e->Eval(c));
    return Value::Bool(RunTest(name, x, av, line) != negate);
  }
};

std::string StripChars(const std::string& s, const std::string& chars, bool left, bool right) {
  auto in = [&](char ch) { return chars.empty() ? std::isspace(static_cast<unsigned char>(ch)) != 0 : chars.find(ch) != std::string::npos; };
  size_t b = 0, e = s.size();
  if (left) while (b < e && in(s[b])) ++b;
  if (right) while (e > b && in(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// Python's str.title() for ASCII: upper-case the first letter of every run of letters.
std::string Title(std::string r) {
  bool start = true;
  for (auto& ch : r) {
    ch = static_cast<char>(start ? std::toupper(ch) : std::tolower(ch));
    start = !std::isalpha(static_cast<unsigned char>(ch));
  }
  return r;
}

Value Filter(const std::string& name, const Value& v, Args& args, Kwargs& kwargs, int line) {
  auto arg = [&](size_t k, const char* kw) -> const Value* {
    if (k < args.size()) return &args[k];
    for (const auto& [n, x] : kwargs) {
      if (n == kw) return &x;
    }
    return nullptr;
  };
  if (name == "length" || name == "count") {
    if (v.type == Value::kString) return Value::Int(static_cast<int64_t>(CodePoints(v.s).size()));
    if (v.type == Value::kList) return Value::Int(static_cast<int64_t>(v.list->size()));
    if (v.type == Value::kDict) return Value::Int(static_cast<int64_t>(v.dict->size()));
    Fail(line, std::string("length of a ") + TypeName(v));
  }
  if (name == "tojson") {
    const Value* ind = arg(0, "indent");
    std::string out;
    ToJson(v, ind && ind->type == Value::kInt ? static_cast<int>(ind->i) : 0, 0, &out, line);
    return Value::Str(out);
  }
  if (name == "trim") return Value::Str(StripChars(Str(v), arg(0, "chars") ? Str(*arg(0, "chars")) : "", true, true));
  if (name == "string") return Value::Str(Str(v));
  if (name == "upper" || name == "lower") {
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(Str(v));
    std::string s;
    (name == "upper" ? u.toUpper() : u.toLower()).toUTF8String(s);
    return Value::Str(s);
  }
  if (name == "title") return Value::Str(Title(Str(v)));
  if (name == "capitalize") {
    std::string s = Str(v);
    for (size_t k = 0; k < s.size(); ++k) s[k] = static_cast<char>(k ? std::tolower(s[k]) : std::toupper(s[k]));
    return Value::Str(s);
  }
  if (name == "first" || name == "last") {
    if (v.type == Value::kList) {
      if (v.list->empty()) return Value::Undefined("first of an empty list");
      return name == "first" ? v.list->front() : v.list->back();
    }
    if (v.type == Value::kString && !v.s.empty()) {
      auto cps = CodePoints(v.s);
      return Value::Str(name == "first" ? cps.front() : cps.back());
    }
    Fail(line, name + " of a " + TypeName(v));
  }
  if (name == "join") {
    std::string sep = arg(0, "d") ? Str(*arg(0, "d")) : "";
    if (v.type != Value::kList) Fail(line, std::string("join of a ") + TypeName(v));
    std::string out;
    for (size_t k = 0; k < v.list->size(); ++k) out += (k ? sep : "") + Str((*v.list)[k]);
    return Value::Str(out);
  }
  if (name == "default" || name == "d") {
    const Value* d = arg(0, "default_value");
    bool boolean = arg(1, "boolean") && Truthy(*arg(1, "boolean"));
    if (v.type == Value::kUndefined || (boolean && !Truthy(v))) return d ? *d : Value::Str("");
    return v;
  }
  if (name == "list") {
    if (v.type == Value::kList) return v;
    if (v.type == Value::kString) {
      List l;
      for (auto& cp : CodePoints(v.s)) l.push_back(Value::Str(cp));
      return Value::MakeList(l);
    }
    if (v.type == Value::kDict) {
      List l;
      for (const auto& [k, x] : *v.dict) l.push_back(Value::Str(k));
      return Value::MakeList(l);
    }
  }
  if (name == "reverse") {
    if (v.type == Value::kList) {
      List l(v.list->rbegin(), v.list->rend());
      return Value::MakeList(l);
    }
    if (v.type == Value::kString) {
      auto cps = CodePoints(v.s);
      std::string r;
      for (auto it = cps.rbegin(); it != cps.rend(); ++it) r += *it;
      return Value::Str(r);
    }
  }
  if (name == "items" && v.type == Value::kDict) {
    List l;
    for (const auto& [k, x] : *v.dict) l.push_back(Value::MakeList({Value::Str(k), x}));
    return Value::MakeList(l);
  }
  if (name == "int") {
    if (v.type == Value::kInt) return v;
    if (v.type == Value::kFloat) return Value::Int(static_cast<int64_t>(v.f));
    if (v.type == Value::kString) return Value::Int(std::atoll(v.s.c_str()));
    return Value::Int(0);
  }
  if (name == "float") {
    if (v.type == Value::kFloat) return v;
    if (v.type == Value::kInt) return Value::Float(static_cast<double>(v.i));
    if (v.type == Value::kString) return Value::Float(std::atof(v.s.c_str()));
    return Value::Float(0);
  }
  if (name == "abs") return v.type == Value::kInt ? Value::Int(std::llabs(v.i)) : Value::Float(std::fabs(v.f));
  if (name == "replace" && args.size() >= 2) {
    std::string s = Str(v), from = Str(args[0]), to = Str(args[1]), out;
    if (from.empty()) return Value::Str(s);
    size_t pos = 0, last = 0;
    while ((pos = s.find(from, last)) != std::string::npos) out += s.substr(last, pos - last) + to, last = pos + from.size();
    return Value::Str(out + s.substr(last));
  }
  Fail(line, "unsupported filter '" + name + "'");
}

struct FilterExpr : Expr {
  ExprPtr a;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  Value Eval(Context& c) const override {
    Value x = a->Eval(c);
    Args av;
    for (const auto& e : args) av.push_back(e->Eval(c));
    Kwargs kv;
    for (const auto& [n, e] : kwargs) kv.emplace_back(n, e->Eval(c));
    return Filter(name, x, av, kv, line);
  }
};

// Methods of strings and dicts, as bound functions.
Value GetAttr(const Value& obj, const std::string& name, int line) {
  if (obj.type == Value::kUndefined) Fail(line, "'" + obj.undefined_name + "' is undefined (reading ." + name + ")");
  if (obj.type == Value::kDict || obj.type == Value::kNamespace) {
    if (const Value* v = obj.Find(name)) return *v;
    if (obj.type == Value::kDict) {
      auto d = obj;
      if (name == "items") {
        return Value::Function([d](Args&, Kwargs&) {
          Args none;
          Kwargs nk;
          return Filter("items", d, none, nk, 0);
        });
      }
      if (name == "keys") {
        return Value::Function([d](Args&, Kwargs&) {
          List l;
          for (const auto& [k, x] : *d.dict) l.push_back(Value::Str(k));
          return Value::MakeList(l);
        });
      }
      if (name == "values") {
        return Value::Function([d](Args&, Kwargs&) {
          List l;
          for (const auto& [k, x] : *d.dict) l.push_back(x);
          return Value::MakeList(l);
        });
      }
      if (name == "get") {
        return Value::Function([d](Args& a, Kwargs&) {
          if (a.empty()) throw std::string("get() needs a key");
          const Value* v = d.Find(Str(a[0]));
          return v ? *v : (a.size() > 1 ? a[1] : Value::None());
        });
      }
    }
    return Value::Undefined(name);
  }
  if (obj.type == Value::kString) {
    const std::string s = obj.s;
    auto str_fn = [s, name](Args& a, Kwargs&) -> Value {
      auto arg = [&](size_t k) { return k < a.size() && a[k].type != Value::kNone ? Str(a[k]) : std::string(); };
      if (name == "startswith") return Value::Bool(s.rfind(arg(0), 0) == 0);
      if (name == "endswith") {
        std::string x = arg(0);
        return Value::Bool(s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0);
      }
      if (name == "strip") return Value::Str(StripChars(s, arg(0), true, true));
      if (name == "lstrip") return Value::Str(StripChars(s, arg(0), true, false));
      if (name == "rstrip") return Value::Str(StripChars(s, arg(0), false, true));
      if (name == "upper" || name == "lower" || name == "capitalize") {
        Args none;
        Kwargs nk;
        return Filter(name, Value::Str(s), none, nk, 0);
      }
      if (name == "title") return Value::Str(Title(s));
      if (name == "replace") {
        Kwargs nk;
        return Filter("replace", Value::Str(s), a, nk, 0);
      }
      if (name == "split") {
        List l;
        std::string sep = arg(0);
        if (sep.empty()) {  // whitespace split, empty strings dropped
          std::istringstream ss(s);
          std::string w;
          while (ss >> w) l.push_back(Value::Str(w));
        } else {
          size_t last = 0, pos;
          while ((pos = s.find(sep, last)) != std::string::npos) l.push_back(Value::Str(s.substr(last, pos - last))), last = pos + sep.size();
          l.push_back(Value::Str(s.substr(last)));
        }
        return Value::MakeList(l);
      }
      throw std::string("unsupported string method '" + name + "'");
    };
    static const char* kMethods[] = {"startswith", "endswith", "strip", "lstrip", "rstrip", "upper", "lower",
                                     "capitalize", "title", "replace", "split"};
    for (const char* m : kMethods) {
      if (name == m) return Value::Function(str_fn);
    }
    Fail(line, "unsupported string attribute '" + name + "'");
  }
  if (obj.type == Value::kList) Fail(line, "unsupported list attribute '" + name + "'");
  return Value::Undefined(name);
}

// ========================================================================================== parsing
struct Token {
  enum Kind { kName, kString, kInt, kFloat, kOp, kEnd } kind = kEnd;
  std::string text;
};

class ExprLexer {
 public:
  ExprLexer(const std::string& src, int line) : src_(src), line_(line) { Lex(); }
  const Token& Peek(size_t k = 0) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }
  Token Next() { return toks_[std::min(pos_++, toks_.size() - 1)]; }
  bool Accept(const std::string& op) {
    if ((Peek().kind == Token::kOp || Peek().kind == Token::kName) && Peek().text == op) {
      ++pos_;
      return true;
    }
    return false;
  }
  void Expect(const std::string& op) {
    if (!Accept(op)) Fail(line_, "expected '" + op + "' but found '" + Peek().text + "'");
  }
  bool AtEnd() const { return Peek().kind == Token::kEnd; }
  int line() const { return line_; }

 private:
  void Lex() {
    size_t i = 0;
    while (i < src_.size()) {
      char ch = src_[i];
      if (std::isspace(static_cast<unsigned char>(ch))) { ++i; continue; }
      if (std::isalpha(static_cast<unsigned char>(ch)) || ch == '_') {
        size_t b = i;
        while (i < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[i])) || src_[i] == '_')) ++i;
        toks_.push_back({Token::kName, src_.substr(b, i - b)});
      } else if (std::isdigit(static_cast<unsigned char>(ch))) {
        size_t b = i;
        bool is_float = false;
        while (i < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[i])) || src_[i] == '.' || src_[i] == '_')) {
          if (src_[i] == '.') {
            if (i + 1 >= src_.size() || !std::isdigit(static_cast<unsigned char>(src_[i + 1]))) break;
            is_float = true;
          }
          ++i;
        }
        toks_.push_back({is_float ? Token::kFloat : Token::kInt, src_.substr(b, i - b)});
      } else if (ch == '\'' || ch == '"') {
        std::string s;
        ++i;
        while (i < src_.size() && src_[i] != ch) {
          if (src_[i] == '\\' && i + 1 < src_.size()) {
            char e = src_[++i];
            switch (e) {
              case 'n': s += '\n'; break;
              case 't': s += '\t'; break;
              case 'r': s += '\r'; break;
              case '\\': s += '\\'; break;
              case '\'': s += '\''; break;
              case '"': s += '"'; break;
              default: s += '\\'; s += e;
            }
            ++i;
          } else {
            s += src_[i++];
          }
        }
        if (i >= src_.size()) Fail(line_, "unterminated string literal");
        ++i;
        toks_.push_back({Token::kString, s});
      } else {
        static const char* kOps[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                     "(", ")", "[", "]", "{", "}", ".", ",", ":", "|", "="};
        bool found = false;
        for (const char* op : kOps) {
          size_t n = std::strlen(op);
          if (src_.compare(i, n, op) == 0) {
            toks_.push_back({Token::kOp, op});
            i += n;
            found = true;
            break;
          }
        }
        if (!found) Fail(line_, std::string("unexpected character '") + ch + "'");
      }
    }
    toks_.push_back({Token::kEnd, "end of tag"});
  }
  std::string src_;
  int line_;
  std::vector<Token> toks_;
  size_t pos_ = 0;
};

class ExprParser {
 public:
  explicit ExprParser(ExprLexer& lx) : lx_(lx) {}
  ExprPtr Parse() { return Conditional(); }
  ExprPtr Or() {
    auto a = And();
    while (lx_.Accept("or")) a = Bin("or", a, And());
    return a;
  }

 private:
  template <typename T>
  std::shared_ptr<T> Make() {
    auto e = std::make_shared<T>();
    e->line = lx_.line();
    return e;
  }
  ExprPtr Bin(const std::string& op, ExprPtr a, ExprPtr b) {
    auto e = Make<Binary>();
    e->op = op, e->a = std::move(a), e->b = std::move(b);
    return e;
  }
  ExprPtr Conditional() {
    auto a = Or();
    if (lx_.Accept("if")) {
      auto e = Make<rlhf::text::jinja::Conditional>();
      e->yes = a;
      e->cond = Or();
      if (lx_.Accept("else")) e->no = Conditional();
      return e;
    }
    return a;
  }
  ExprPtr And() {
    auto a = Not();
    while (lx_.Accept("and")) a = Bin("and", a, Not());
    return a;
  }
  ExprPtr Not() {
    if (lx_.Accept("not")) {
      auto e = Make<Unary>();
      e->op = "not", e->a = Not();
      return e;
    }
    return Compare();
  }
  ExprPtr Compare() {
    auto a = Math1();
    for (;;) {
      const Token& t = lx_.Peek();
      if (t.kind == Token::kOp && (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == ">" ||
                                   t.text == "<=" || t.text == ">=")) {
        std::string op = lx_.Next().text;
        a = Bin(op, a, Math1());
      } else if (t.kind == Token::kName && t.text == "in") {
        lx_.Next();
        a = Bin("in", a, Math1());
      } else if (t.kind == Token::kName && t.text == "not" && lx_.Peek(1).text == "in") {
        lx_.Next(), lx_.Next();
        a = Bin("not in", a, Math1());
      } else {
        return a;
      }
    }
  }
  ExprPtr Math1() {
    auto a = Concat();
    while (lx_.Peek().kind == Token::kOp && (lx_.Peek().text == "+" || lx_.Peek().text == "-")) {
      std::string op = lx_.Next().text;
      a = Bin(op, a, Concat());
    }
    return a;
  }
  ExprPtr Concat() {
    auto a = Math2();
    while (lx_.Peek().kind == Token::kOp && lx_.Peek().text == "~") {
      lx_.Next();
      a = Bin("~", a, Math2());
    }
    return a;
  }
  ExprPtr Math2() {
    auto a = Pow();
    while (lx_.Peek().kind == Token::kOp && (lx_.Peek().text == "*" || lx_.Peek().text == "/" ||
                                             lx_.Peek().text == "//" || lx_.Peek().text == "%")) {
      std::string op = lx_.Next().text;
      a = Bin(op, a, Pow());
    }
    return a;
  }
  ExprPtr Pow() {
    auto a = UnaryExpr();
    if (lx_.Peek().kind == Token::kOp && lx_.Peek().text == "**") Fail(lx_.line(), "'**' is not supported");
    return a;
  }
  ExprPtr UnaryExpr() {
    if (lx_.Peek().kind == Token::kOp && (lx_.Peek().text == "-" || lx_.Peek().text == "+")) {
      auto e = Make<Unary>();
      e->op = lx_.Next().text;
      e->a = UnaryExpr();
      return FilterTests(e);
    }
    return FilterTests(Postfix(Primary()));
  }
  void CallArgs(std::vector<ExprPtr>* args, std::vector<std::pair<std::string, ExprPtr>>* kwargs) {
    if (lx_.Accept(")")) return;
    do {
      if (lx_.Peek().kind == Token::kName && lx_.Peek(1).kind == Token::kOp && lx_.Peek(1).text == "=") {
        std::string name = lx_.Next().text;
        lx_.Next();
        kwargs->emplace_back(name, Parse());
      } else {
        args->push_back(Parse());
      }
    } while (lx_.Accept(","));
    lx_.Expect(")");
  }
  ExprPtr FilterTests(ExprPtr a) {
    for (;;) {
      if (lx_.Peek().kind == Token::kOp && lx_.Peek().text == "|") {
        lx_.Next();
        auto f = Make<FilterExpr>();
        f->a = a;
        f->name = lx_.Next().text;
        if (lx_.Accept("(")) CallArgs(&f->args, &f->kwargs);
        a = Postfix(f);
      } else if (lx_.Peek().kind == Token::kName && lx_.Peek().text == "is") {
        lx_.Next();
        auto t = Make<Test>();
        t->a = a;
        t->negate = lx_.Accept("not");
        t->name = lx_.Next().text;
        if (lx_.Accept("(")) {
          std::vector<std::pair<std::string, ExprPtr>> kw;
          CallArgs(&t->args, &kw);
        } else if (lx_.Peek().kind == Token::kString || lx_.Peek().kind == Token::kInt) {
          t->args.push_back(Primary());
        }
        a = t;
      } else {
        return a;
      }
    }
  }
  ExprPtr Postfix(ExprPtr a) {
    for (;;) {
      if (lx_.Accept(".")) {
        auto e = Make<Attr>();
        e->obj = a;
        e->name = lx_.Next().text;
        a = e;
      } else if (lx_.Accept("[")) {
        ExprPtr start, stop, step;
        bool slice = false;
        if (!(lx_.Peek().kind == Token::kOp && lx_.Peek().text == ":")) start = Parse();
        if (lx_.Accept(":")) {
          slice = true;
          if (!(lx_.Peek().kind == Token::kOp && (lx_.Peek().text == ":" || lx_.Peek().text == "]"))) stop = Parse();
          if (lx_.Accept(":") && !(lx_.Peek().kind == Token::kOp && lx_.Peek().text == "]")) step = Parse();
        }
        lx_.Expect("]");
        if (slice) {
          auto e = Make<SliceExpr>();
          e->obj = a, e->start = start, e->stop = stop, e->step = step;
          a = e;
        } else {
          auto e = Make<Item>();
          e->obj = a, e->index = start;
          a = e;
        }
      } else if (lx_.Accept("(")) {
        auto e = Make<Call>();
        e->fn = a;
        CallArgs(&e->args, &e->kwargs);
        a = e;
      } else {
        return a;
      }
    }
  }
  ExprPtr Primary() {
    Token t = lx_.Next();
    auto lit = [&](Value v) {
      auto e = Make<Literal>();
      e->v = std::move(v);
      return e;
    };
    switch (t.kind) {
      case Token::kString: {
        std::string s = t.text;
        while (lx_.Peek().kind == Token::kString) s += lx_.Next().text;  // adjacent literals concatenate
        return lit(Value::Str(s));
      }
      case Token::kInt: return lit(Value::Int(std::stoll(t.text)));
      case Token::kFloat: return lit(Value::Float(std::stod(t.text)));
      case Token::kName: {
        if (t.text == "true" || t.text == "True") return lit(Value::Bool(true));
        if (t.text == "false" || t.text == "False") return lit(Value::Bool(false));
        if (t.text == "none" || t.text == "None") return lit(Value::None());
        auto e = Make<Name>();
        e->name = t.text;
        return e;
      }
      case Token::kOp:
        if (t.text == "(") {
          auto e = Parse();
          if (lx_.Accept(",")) {  // a tuple: a list here
            auto l = Make<ListExpr>();
            l->items.push_back(e);
            if (!(lx_.Peek().kind == Token::kOp && lx_.Peek().text == ")")) {
              do l->items.push_back(Parse());
              while (lx_.Accept(",") && !(lx_.Peek().kind == Token::kOp && lx_.Peek().text == ")"));
            }
            lx_.Expect(")");
            return l;
          }
          lx_.Expect(")");
          return e;
        }
        if (t.text == "[") {
          auto l = Make<ListExpr>();
          if (!lx_.Accept("]")) {
            do {
              if (lx_.Peek().kind == Token::kOp && lx_.Peek().text == "]") break;
              l->items.push_back(Parse());
            } while (lx_.Accept(","));
            lx_.Expect("]");
          }
          return l;
        }
        if (t.text == "{") {
          auto d = Make<DictExpr>();
          if (!lx_.Accept("}")) {
            do {
              if (lx_.Peek().kind == Token::kOp && lx_.Peek().text == "}") break;
              auto k = Parse();
              lx_.Expect(":");
              d->items.emplace_back(k, Parse());
            } while (lx_.Accept(","));
            lx_.Expect("}");
          }
          return d;
        }
        break;
      default: break;
    }
    Fail(lx_.line(), "unexpected '" + t.text + "' in expression");
  }
  ExprLexer& lx_;
};


}  // namespace jinja

// ========================================================================================= statements
struct TemplateNode {
  virtual ~TemplateNode() = default;
  virtual void Render(jinja::Context& c) const = 0;
  int line = 0;
};

namespace jinja {

using NodePtr = std::shared_ptr<TemplateNode>;
using Body = std::vector<NodePtr>;

void RenderBody(const Body& body, Context& c) {
  for (const auto& n : body) n->Render(c);
}

struct BodyNode : TemplateNode {
  Body body;
  void Render(Context& c) const override { RenderBody(body, c); }
};
struct TextNode : TemplateNode {
  std::string text;
  void Render(Context& c) const override { c.out += text; }
};
struct OutputNode : TemplateNode {
  ExprPtr expr;
  void Render(Context& c) const override { c.out += Str(expr->Eval(c)); }
};
struct IfNode : TemplateNode {
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body otherwise;
  void Render(Context& c) const override {
    for (const auto& [cond, body] : branches) {
      if (Truthy(cond->Eval(c))) return RenderBody(body, c);
    }
    RenderBody(otherwise, c);
  }
};
struct ForNode : TemplateNode {
  std::vector<std::string> vars;
  ExprPtr iter, filter;
  Body body, otherwise;
  void Render(Context& c) const override {
    Value seq = iter->Eval(c);
    List items;
    if (seq.type == Value::kList) items = *seq.list;
    else if (seq.type == Value::kDict) for (const auto& [k, v] : *seq.dict) items.push_back(Value::Str(k));
    else if (seq.type == Value::kString) for (auto& cp : CodePoints(seq.s)) items.push_back(Value::Str(cp));
    else if (seq.type == Value::kUndefined || seq.type == Value::kNone) items = {};
    else Fail(line, std::string("cannot loop over a ") + TypeName(seq));
    auto bind = [&](const Value& item) {
      if (vars.size() == 1) return c.Set(vars[0], item);
      if (item.type != Value::kList || item.list->size() != vars.size()) Fail(line, "cannot unpack loop item");
      for (size_t k = 0; k < vars.size(); ++k) c.Set(vars[k], (*item.list)[k]);
    };
    if (filter) {  // {% for x in xs if cond %}: the loop sees only the kept items
      List kept;
      for (const auto& item : items) {
        c.scopes.emplace_back();
        bind(item);
        bool keep = Truthy(filter->Eval(c));
        c.scopes.pop_back();
        if (keep) kept.push_back(item);
      }
      items.swap(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < n; ++k) {
      c.scopes.emplace_back();
      bind(items[k]);
      Dict loop = {{"index", Value::Int(k + 1)},        {"index0", Value::Int(k)},
                   {"revindex", Value::Int(n - k)},     {"revindex0", Value::Int(n - k - 1)},
                   {"first", Value::Bool(k == 0)},      {"last", Value::Bool(k == n - 1)},
                   {"length", Value::Int(n)},
                   {"previtem", k > 0 ? items[k - 1] : Value::Undefined("loop.previtem")},
                   {"nextitem", k + 1 < n ? items[k + 1] : Value::Undefined("loop.nextitem")}};
      c.Set("loop", Value::MakeDict(std::move(loop)));
      RenderBody(body, c);
      c.scopes.pop_back();
    }
    if (n == 0) RenderBody(otherwise, c);
  }
};
struct SetNode : TemplateNode {
  std::string name, attr;  // attr set: {% set ns.attr = ... %}
  ExprPtr expr;
  Body block;  // {% set x %}...{% endset %}
  void Render(Context& c) const override {
    Value v;
    if (expr) {
      v = expr->Eval(c);
    } else {
      std::string saved;
      saved.swap(c.out);
      RenderBody(block, c);
      v = Value::Str(c.out);
      c.out.swap(saved);
    }
    if (attr.empty()) return c.Set(name, std::move(v));
    Value ns = c.Lookup(name);
    if (ns.type != Value::kNamespace) Fail(line, "'" + name + "' is not a namespace(); cannot set ." + attr);
    for (auto& [k, x] : *ns.dict) {
      if (k == attr) { x = std::move(v); return; }
    }
    ns.dict->emplace_back(attr, std::move(v));
  }
};

struct Chunk {
  enum Kind { kText, kExpr, kStmt, kComment } kind = kText;
  std::string content;
  int line = 1;
  bool strip_before = false, strip_after = false;
};

std::vector<Chunk> Lex(const std::string& src) {
  std::vector<Chunk> chunks;
  size_t i = 0;
  int line = 1;
  auto count_lines = [&](size_t from, size_t to) {
    for (size_t k = from; k < to; ++k) line += src[k] == '\n';
  };
  while (i < src.size()) {
    size_t open = std::string::npos;
    for (size_t k = i; k + 1 < src.size(); ++k) {
      if (src[k] == '{' && (src[k + 1] == '{' || src[k + 1] == '%' || src[k + 1] == '#')) {
        open = k;
        break;
      }
    }
    if (open == std::string::npos) {
      chunks.push_back({Chunk::kText, src.substr(i), line});
      count_lines(i, src.size());
      break;
    }
    if (open > i) {
      chunks.push_back({Chunk::kText, src.substr(i, open - i), line});
      count_lines(i, open);
    }
    char kind = src[open + 1];
    std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    Chunk c;
    c.kind = kind == '{' ? Chunk::kExpr : kind == '%' ? Chunk::kStmt : Chunk::kComment;
    c.line = line;
    size_t b = open + 2;
    if (b < src.size() && (src[b] == '-' || src[b] == '+')) c.strip_before = src[b] == '-', ++b;
    // Find the closing delimiter, skipping string literals in expressions and statements.
    size_t k = b;
    char quote = 0;
    for (; k + 1 < src.size(); ++k) {
      if (c.kind != Chunk::kComment) {
        if (quote) {
          if (src[k] == '\\') { ++k; continue; }
          if (src[k] == quote) quote = 0;
          continue;
        }
        if (src[k] == '\'' || src[k] == '"') { quote = src[k]; continue; }
      }
      if (src.compare(k, 2, close) == 0) break;
    }
    if (k + 1 >= src.size()) Fail(line, "unclosed '{" + std::string(1, kind) + "' tag");
    size_t e = k;
    if (e > b && (src[e - 1] == '-' || src[e - 1] == '+')) c.strip_after = src[e - 1] == '-', --e;
    c.content = src.substr(b, e - b);
    count_lines(open, k + 2);
    chunks.push_back(c);
    i = k + 2;
  }
  // Whitespace control: '-' strips all whitespace on that side; trim_blocks drops the first newline
  // after a block tag; lstrip_blocks drops spaces and tabs between a line start and a block tag.
  for (size_t n = 0; n < chunks.size(); ++n) {
    Chunk& c = chunks[n];
    if (c.kind == Chunk::kText) continue;
    const bool block = c.kind != Chunk::kExpr;
    if (n > 0 && chunks[n - 1].kind == Chunk::kText) {
      std::string& t = chunks[n - 1].content;
      if (c.strip_before) {
        size_t e = t.find_last_not_of(" \t\r\n\f\v");
        t = e == std::string::npos ? "" : t.substr(0, e + 1);
      } else if (block) {
        size_t nl = t.find_last_of('\n');
        size_t from = nl == std::string::npos ? 0 : nl + 1;
        bool at_line_start = nl != std::string::npos || n == 1;
        if (at_line_start && t.find_first_not_of(" \t", from) == std::string::npos) t.erase(from);
      }
    }
    if (n + 1 < chunks.size() && chunks[n + 1].kind == Chunk::kText) {
      std::string& t = chunks[n + 1].content;
      if (c.strip_after) {
        size_t b = t.find_first_not_of(" \t\r\n\f\v");
        t = b == std::string::npos ? "" : t.substr(b);
      } else if (block) {
        if (t.rfind("\r\n", 0) == 0) t.erase(0, 2);
        else if (!t.empty() && t[0] == '\n') t.erase(0, 1);
      }
    }
  }
  return chunks;
}

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Chunk> chunks) : chunks_(std::move(chunks)) {}

  Body ParseAll() {
    std::string end;
    Body b = ParseBody({}, &end);
    return b;
  }

 private:
  // Parses until one of `stops` (a statement keyword); its chunk index is left at pos_ (consumed).
  Body ParseBody(const std::vector<std::string>& stops, std::string* stopped_at) {
    Body body;
    while (pos_ < chunks_.size()) {
      const Chunk& c = chunks_[pos_];
      if (c.kind == Chunk::kText) {
        if (!c.content.empty()) {
          auto t = std::make_shared<TextNode>();
          t->text = c.content;
          t->line = c.line;
          body.push_back(t);
        }
        ++pos_;
        continue;
      }
      if (c.kind == Chunk::kComment) {
        ++pos_;
        continue;
      }
      if (c.kind == Chunk::kExpr) {
        ExprLexer lx(c.content, c.line);
        auto o = std::make_shared<OutputNode>();
        o->expr = ExprParser(lx).Parse();
        if (!lx.AtEnd()) Fail(c.line, "unexpected '" + lx.Peek().text + "' in {{ }}");
        o->line = c.line;
        body.push_back(o);
        ++pos_;
        continue;
      }
      ExprLexer lx(c.content, c.line);
      std::string kw = lx.Peek().text;
      if (std::find(stops.begin(), stops.end(), kw) != stops.end()) {
        *stopped_at = kw;
        return body;
      }
      ++pos_;
      lx.Next();
      if (kw == "if") {
        auto n = std::make_shared<IfNode>();
        n->line = c.line;
        ExprPtr cond = ExprParser(lx).Parse();
        End(lx);
        for (;;) {
          std::string stop;
          Body b = ParseBody({"elif", "else", "endif"}, &stop);
          if (stop.empty()) Fail(c.line, "{% if %} without {% endif %}");
          n->branches.emplace_back(cond, std::move(b));
          ExprLexer lx2(chunks_[pos_].content, chunks_[pos_].line);
          lx2.Next();
          ++pos_;
          if (stop == "elif") {
            cond = ExprParser(lx2).Parse();
            End(lx2);
            continue;
          }
          if (stop == "else") {
            End(lx2);
            std::string stop2;
            n->otherwise = ParseBody({"endif"}, &stop2);
            if (stop2.empty()) Fail(c.line, "{% if %} without {% endif %}");
            ++pos_;
          }
          break;
        }
        body.push_back(n);
      } else if (kw == "for") {
        auto n = std::make_shared<ForNode>();
        n->line = c.line;
        do n->vars.push_back(Name(lx));
        while (lx.Accept(","));
        lx.Expect("in");
        ExprParser ep(lx);
        n->iter = ep.Or();  // not Parse(): a trailing 'if' filters the loop
        if (lx.Accept("if")) n->filter = ExprParser(lx).Parse();
        if (lx.Accept("recursive")) Fail(c.line, "recursive loops are not supported");
        End(lx);
        std::string stop;
        n->body = ParseBody({"else", "endfor"}, &stop);
        if (stop.empty()) Fail(c.line, "{% for %} without {% endfor %}");
        ++pos_;
        if (stop == "else") {
          n->otherwise = ParseBody({"endfor"}, &stop);
          if (stop != "endfor") Fail(c.line, "{% for %} without {% endfor %}");
          ++pos_;
        }
        body.push_back(n);
      } else if (kw == "set") {
        auto n = std::make_shared<SetNode>();
        n->line = c.line;
        n->name = Name(lx);
        if (lx.Accept(".")) n->attr = Name(lx);
        if (lx.Accept("=")) {
          n->expr = ExprParser(lx).Parse();
          End(lx);
        } else {
          End(lx);
          std::string stop;
          n->block = ParseBody({"endset"}, &stop);
          if (stop.empty()) Fail(c.line, "{% set %} block without {% endset %}");
          ++pos_;
        }
        body.push_back(n);
      } else if (kw == "generation") {  // transformers' assistant-mask marker: renders its body
        End(lx);
        auto n = std::make_shared<BodyNode>();
        std::string stop;
        n->body = ParseBody({"endgeneration"}, &stop);
        if (stop.empty()) Fail(c.line, "{% generation %} without {% endgeneration %}");
        ++pos_;
        body.push_back(n);
      } else {
        Fail(c.line, "unsupported statement '{% " + kw + " %}'" +
                         (kw.rfind("end", 0) == 0 || kw == "else" || kw == "elif" ? " here (no block is open)" : ""));
      }
    }
    return body;
  }
  static std::string Name(ExprLexer& lx) {
    Token t = lx.Next();
    if (t.kind != Token::kName) Fail(lx.line(), "expected a name, found '" + t.text + "'");
    return t.text;
  }
  static void End(ExprLexer& lx) {
    if (!lx.AtEnd()) Fail(lx.line(), "unexpected '" + lx.Peek().text + "' in statement");
  }
  std::vector<Chunk> chunks_;
  size_t pos_ = 0;
};

}  // namespace jinja

using namespace jinja;

// ========================================================================================= public API
ChatTemplate::ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(const std::string& source) {
  try {
    auto root = std::make_shared<BodyNode>();
    root->body = TemplateParser(Lex(source)).ParseAll();
    ChatTemplate t;
    t.root_ = root;
    return t;
  } catch (const TemplateError& e) {
    return absl::InvalidArgumentError(absl::StrCat("chat template line ", e.line, ": ", e.message));
  }
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::string& context_json) const {
  ojson ctx = ojson::parse(context_json, nullptr, false);
  if (ctx.is_discarded() || !ctx.is_object()) return absl::InvalidArgumentError("chat context must be a JSON object");
  Context c;
  c.scopes.emplace_back();
  c.Set("raise_exception", Value::Function([](Args& a, Kwargs&) -> Value {
          throw std::string("raise_exception: " + (a.empty() ? std::string() : Str(a[0])));
        }));
  c.Set("namespace", Value::Function([](Args&, Kwargs& k) {
          Value ns;
          ns.type = Value::kNamespace;
          ns.dict = std::make_shared<Dict>(k.begin(), k.end());
          return ns;
        }));
  c.Set("range", Value::Function([](Args& a, Kwargs&) {
          int64_t b = 0, e = 0, s = 1;
          if (a.size() == 1) e = a[0].i;
          if (a.size() >= 2) b = a[0].i, e = a[1].i;
          if (a.size() >= 3) s = a[2].i;
          if (s == 0) throw std::string("range() step cannot be zero");
          List l;
          for (int64_t i = b; s > 0 ? i < e : i > e; i += s) l.push_back(Value::Int(i));
          return Value::MakeList(l);
        }));
  c.Set("strftime_now", Value::Function([](Args& a, Kwargs&) {
          std::time_t now = std::time(nullptr);
          std::tm tm{};
          localtime_r(&now, &tm);
          char buf[128];
          std::strftime(buf, sizeof buf, a.empty() ? "%Y-%m-%d" : Str(a[0]).c_str(), &tm);
          return Value::Str(buf);
        }));
  c.scopes.emplace_back();
  for (const auto& [k, v] : ctx.items()) c.Set(k, FromJson(v));
  try {
    root_->Render(c);
  } catch (const TemplateError& e) {
    return absl::InvalidArgumentError(absl::StrCat("chat template line ", e.line, ": ", e.message));
  }
  return c.out;
}

absl::StatusOr<ChatTemplate::FromFolderResult> ChatTemplate::FromFolder(const std::string& dir) {
  auto slurp = [](const std::string& p) -> std::optional<std::string> {
    std::ifstream in(p);
    if (!in) return std::nullopt;
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  std::string source, origin;
  std::string bos, eos;
  auto config = slurp(dir + "/tokenizer_config.json");
  ojson cfg = config ? ojson::parse(*config, nullptr, false) : ojson();
  if (cfg.is_object()) {
    auto token_text = [](const ojson& t) -> std::string {
      if (t.is_string()) return t.get<std::string>();
      if (t.is_object() && t.contains("content") && t["content"].is_string()) return t["content"].get<std::string>();
      return "";
    };
    if (cfg.contains("bos_token")) bos = token_text(cfg["bos_token"]);
    if (cfg.contains("eos_token")) eos = token_text(cfg["eos_token"]);
  }
  if (auto j = slurp(dir + "/chat_template.jinja")) {
    source = *j;
    origin = dir + "/chat_template.jinja";
  } else if (cfg.is_object() && cfg.contains("chat_template")) {
    const auto& t = cfg["chat_template"];
    origin = dir + "/tokenizer_config.json";
    if (t.is_string()) {
      source = t.get<std::string>();
    } else if (t.is_array()) {
      for (const auto& e : t) {
        if (e.value("name", "") == "default" || source.empty()) source = e.value("template", "");
      }
    }
  }
  if (source.empty()) {
    return absl::NotFoundError(absl::StrCat(dir, ": no chat template (chat_template.jinja or tokenizer_config.json's "
                                                 "chat_template); set one or use plain prompts"));
  }
  auto t = Parse(source);
  if (!t.ok()) return Annotate(t.status(), origin);
  return FromFolderResult{std::move(*t), bos, eos};
}

}  // namespace rlhf::text
