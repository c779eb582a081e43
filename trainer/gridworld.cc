#include "trainer/gridworld.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <deque>
#include <limits>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "trainer/algo/advantages.h"
#include "trainer/algo/masked.h"
#include "trainer/algo/ppo.h"

namespace rlhf::gridworld {

const config::Section<GridWorldConfig>& GridWorldConfig::Spec() {
  static const auto* s = [] {
    using G = GridWorldConfig;
    auto* s = new config::Section<G>("gridworld");
    s->Add("size", &G::size, "the grid is size x size cells", config::InRange(2, 32));
    s->Add("walls", &G::walls, "wall cells as \"row,col\" strings");
    s->Add("goal", &G::goal, "goal cell \"row,col\"");
    s->Add("iterations", &G::iterations, "PPO iterations (rollout batch + update)", config::AtLeast(1));
    s->Add("episodes", &G::episodes, "episodes per rollout batch, from random start cells", config::AtLeast(1));
    s->Add("max_steps", &G::max_steps, "episode length cap; 0 = 2 * size * size", config::AtLeast(0));
    s->Add("hidden", &G::hidden, "width of the policy and value networks", config::AtLeast(1));
    s->Add("lr", &G::lr, "Adam learning rate", config::InRange(0, 1));
    s->Add("ppo_epochs", &G::ppo_epochs, "passes over each rollout batch", config::AtLeast(1));
    s->Add("minibatches", &G::minibatches, "optimiser steps per pass", config::AtLeast(1));
    s->Add("eps", &G::eps, "PPO clip range", config::InRange(0, 1));
    s->Add("gamma", &G::gamma, "discount", config::InRange(0, 1));
    s->Add("lambda", &G::lambda, "GAE lambda", config::InRange(0, 1));
    s->Add("vf_coef", &G::vf_coef, "weight of the value loss", config::AtLeast(0));
    s->Add("vclip", &G::vclip, "value clip range; 0 = unclipped", config::AtLeast(0));
    s->Add("ent_coef", &G::ent_coef, "entropy bonus at the start, decayed linearly to 0 at 80% of the iterations",
           config::AtLeast(0));
    return s;
  }();
  return *s;
}

namespace {
absl::StatusOr<int64_t> ParseCell(const std::string& text, int64_t n, const std::string& key) {
  std::vector<std::string> parts = absl::StrSplit(text, ',');
  int64_t r = 0, c = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &r) || !absl::SimpleAtoi(parts[1], &c)) {
    return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': '", text, "' is not \"row,col\""));
  }
  if (r < 0 || r >= n || c < 0 || c >= n) {
    return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': cell ", text, " is outside the ", n, "x", n, " grid"));
  }
  return r * n + c;
}
constexpr int64_t kDr[4] = {-1, 0, 1, 0};
constexpr int64_t kDc[4] = {0, 1, 0, -1};
}  // namespace

absl::StatusOr<Grid> Grid::Make(const GridWorldConfig& config) {
  Grid g;
  g.n_ = config.size;
  g.wall_.assign(g.n_ * g.n_, false);
  for (const auto& w : config.walls) {
    ASSIGN_OR_RETURN(int64_t cell, ParseCell(w, g.n_, "gridworld.walls"));
    g.wall_[cell] = true;
  }
  ASSIGN_OR_RETURN(g.goal_, ParseCell(config.goal, g.n_, "gridworld.goal"));
  if (g.wall_[g.goal_]) return absl::InvalidArgumentError("config key 'gridworld.goal': the goal is a wall cell");
  auto vi = ValueIteration(g);
  for (int64_t c = 0; c < g.cells(); ++c) {
    if (!g.wall_[c] && std::isinf(vi[c])) {
      return absl::InvalidArgumentError(absl::StrCat("config key 'gridworld.walls': cell ", c / g.n_, ",", c % g.n_,
                                                     " cannot reach the goal"));
    }
  }
  return g;
}

int64_t Grid::Next(int64_t cell, int64_t action) const {
  int64_t r = cell / n_ + kDr[action], c = cell % n_ + kDc[action];
  if (r < 0 || r >= n_ || c < 0 || c >= n_ || wall_[r * n_ + c]) return cell;
  return r * n_ + c;
}

std::vector<int64_t> Grid::StartCells() const {
  std::vector<int64_t> out;
  for (int64_t c = 0; c < cells(); ++c) {
    if (!wall_[c] && c != goal_) out.push_back(c);
  }
  return out;
}

std::vector<double> ValueIteration(const Grid& g) {
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> v(g.cells(), -inf);
  v[g.goal()] = 0;
  // V(s) = max_a (-1 + V(next(s, a))), iterated to the fixed point (at most cells() sweeps).
  for (int64_t sweep = 0; sweep < g.cells(); ++sweep) {
    bool changed = false;
    for (int64_t c = 0; c < g.cells(); ++c) {
      if (g.wall(c) || c == g.goal()) continue;
      double best = -inf;
      for (int64_t a = 0; a < 4; ++a) best = std::max(best, -1 + v[g.Next(c, a)]);
      if (best != v[c]) {
        v[c] = best;
        changed = true;
      }
    }
    if (!changed) break;
  }
  for (int64_t c = 0; c < g.cells(); ++c) {
    if (g.wall(c)) v[c] = std::nan("");
  }
  return v;
}

namespace {
torch::nn::Sequential Mlp(int64_t in, int64_t hidden, int64_t out, double last_std) {
  torch::nn::Sequential net(torch::nn::Linear(in, hidden), torch::nn::Tanh(), torch::nn::Linear(hidden, hidden),
                            torch::nn::Tanh(), torch::nn::Linear(hidden, out));
  torch::NoGradGuard ng;
  auto* last = net[4]->as<torch::nn::Linear>();
  last->weight.normal_(0, last_std);
  last->bias.zero_();
  return net;
}
}  // namespace

PpoResult TrainPpo(const Grid& grid, const GridWorldConfig& cfg, uint64_t seed) {
  // One thread: the networks are tiny, and the result must not depend on the machine's core count.
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  struct Restore {
    int n;
    ~Restore() { at::set_num_threads(n); }
  } restore{threads};
  torch::manual_seed(seed);  // network initialisation
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  const int64_t C = grid.cells(), E = cfg.episodes;
  const int64_t Tmax = cfg.max_steps > 0 ? cfg.max_steps : 2 * C;
  auto policy = Mlp(C, cfg.hidden, 4, 0.01);
  auto value = Mlp(C, cfg.hidden, 1, 1.0);
  std::vector<torch::Tensor> params = policy->parameters();
  for (auto& p : value->parameters()) params.push_back(p);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(cfg.lr));
  // next_table[cell, action], and the start cells.
  auto next_table = torch::zeros({C, 4}, torch::kInt64);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t a = 0; a < 4; ++a) next_table[c][a] = grid.Next(c, a);
  }
  auto starts_v = grid.StartCells();
  auto starts = torch::tensor(starts_v, torch::kInt64);
  auto onehot = [&](const torch::Tensor& s) { return torch::one_hot(s, C).to(torch::kFloat32); };

  PpoResult result;
  algo::PolicyLossOptions pl;
  pl.eps_low = pl.eps_high = cfg.eps;
  for (int64_t it = 0; it < cfg.iterations; ++it) {
    // Learning rate annealed linearly to 0 (as cleanrl's PPO does).
    for (auto& group : opt.param_groups()) {
      static_cast<torch::optim::AdamOptions&>(group.options()).lr(cfg.lr * (1.0 - static_cast<double>(it) / cfg.iterations));
    }
    // Entropy bonus decays linearly to 0 at 80% of the iterations; the rest lets values settle on the
    // (then nearly deterministic) greedy policy.
    const double ent_coef = cfg.ent_coef * std::max(0.0, 1.0 - static_cast<double>(it) / (0.8 * cfg.iterations));
    // ---- rollout: E episodes in lockstep; mask marks the steps taken before reaching the goal.
    torch::Tensor S = torch::zeros({E, Tmax}, torch::kInt64), A = torch::zeros({E, Tmax}, torch::kInt64);
    torch::Tensor LP = torch::zeros({E, Tmax}), R = torch::zeros({E, Tmax}), M = torch::zeros({E, Tmax});
    auto state = starts.index_select(0, torch::randint(0, starts.size(0), {E}, gen, torch::kInt64));
    auto alive = torch::ones({E}, torch::kBool);
    int64_t T = 0;
    {
      torch::NoGradGuard ng;
      for (; T < Tmax && alive.any().item<bool>(); ++T) {
        auto logp = torch::log_softmax(policy->forward(onehot(state)), -1);
        auto a = torch::multinomial(logp.exp(), 1, /*replacement=*/true, gen).squeeze(1);
        S.select(1, T).copy_(state);
        A.select(1, T).copy_(a);
        LP.select(1, T).copy_(logp.gather(1, a.unsqueeze(1)).squeeze(1));
        M.select(1, T).copy_(alive.to(torch::kFloat32));
        R.select(1, T).copy_(-alive.to(torch::kFloat32));
        auto nxt = next_table.index({state, a});
        state = torch::where(alive, nxt, state);
        alive = alive.logical_and(state.ne(grid.goal()));
      }
      S = S.narrow(1, 0, T), A = A.narrow(1, 0, T), LP = LP.narrow(1, 0, T), R = R.narrow(1, 0, T), M = M.narrow(1, 0, T);
      // An episode cut at max_steps ends there (no bootstrap): a policy stuck against a wall then has a
      // bounded return, and its values cannot run away through their own estimates.
    }
    result.mean_return.push_back((R * M).sum(1).mean().item<double>());
    if ((it + 1) % 50 == 0 || it == 0) {
      spdlog::info("gridworld PPO iteration {}/{}: mean return {:.2f}, entropy coefficient {:.4f}", it + 1,
                   cfg.iterations, result.mean_return.back(), ent_coef);
    }
    torch::Tensor V_old;
    {
      torch::NoGradGuard ng;
      V_old = value->forward(onehot(S.reshape({-1}))).view({E, T});
    }
    auto gae = algo::Gae(R, V_old, M, cfg.gamma, cfg.lambda);
    auto adv = algo::Whiten(gae.advantages, M);
    // ---- update on the steps actually taken, flattened to [N, 1] "sequences" of one token.
    auto keep = M.reshape({-1}).gt(0).nonzero().squeeze(1);
    auto s_all = S.reshape({-1}).index_select(0, keep), a_all = A.reshape({-1}).index_select(0, keep);
    auto old_all = LP.reshape({-1}).index_select(0, keep), adv_all = adv.reshape({-1}).index_select(0, keep);
    auto ret_all = gae.returns.reshape({-1}).index_select(0, keep), v_all = V_old.reshape({-1}).index_select(0, keep);
    const int64_t N = keep.size(0);
    const int64_t mb = std::max<int64_t>(1, N / cfg.minibatches);
    for (int64_t epoch = 0; epoch < cfg.ppo_epochs; ++epoch) {
      auto perm = torch::randperm(N, gen, torch::kInt64);
      for (int64_t start = 0; start + mb <= N; start += mb) {
        auto idx = perm.narrow(0, start, mb);
        auto col = [&](const torch::Tensor& x) { return x.index_select(0, idx).unsqueeze(1); };  // [mb, 1]
        auto ones = torch::ones({mb, 1});
        auto logp = torch::log_softmax(policy->forward(onehot(s_all.index_select(0, idx))), -1);  // [mb, 4]
        auto lp = logp.gather(1, col(a_all));
        auto entropy = -(logp.exp() * logp).sum(1, true);
        auto pol = algo::PolicyLoss(lp, col(old_all), col(adv_all), ones, pl, algo::Aggregation::kTokenMean, mb);
        auto v = value->forward(onehot(s_all.index_select(0, idx)));  // [mb, 1]
        auto vl = algo::ValueLoss(v, col(v_all), col(ret_all), ones,
                                  cfg.vclip > 0 ? algo::ValueClip::kPpo : algo::ValueClip::kNone, cfg.vclip,
                                  algo::Aggregation::kTokenMean, mb);
        auto loss = pol.loss + cfg.vf_coef * vl.loss +
                    algo::EntropyBonus(entropy, ones, ent_coef, algo::Aggregation::kTokenMean, mb);
        opt.zero_grad();
        loss.backward();
        torch::nn::utils::clip_grad_norm_(params, 1.0);
        opt.step();
      }
    }
  }
  torch::NoGradGuard ng;
  auto all = torch::arange(C, torch::kInt64);
  auto v = value->forward(onehot(all)).squeeze(1);
  auto greedy = policy->forward(onehot(all)).argmax(1);
  for (int64_t c = 0; c < C; ++c) {
    bool open = !grid.wall(c) && c != grid.goal();
    result.values.push_back(grid.wall(c) ? std::nan("") : c == grid.goal() ? 0.0 : v[c].item<double>());
    result.greedy.push_back(open ? greedy[c].item<int64_t>() : -1);
  }
  return result;
}

int64_t GreedySteps(const Grid& grid, const std::vector<int64_t>& greedy, int64_t start) {
  int64_t cell = start;
  for (int64_t steps = 0; steps <= grid.cells(); ++steps) {
    if (cell == grid.goal()) return steps;
    if (greedy[cell] < 0) return -1;
    cell = grid.Next(cell, greedy[cell]);
  }
  return -1;
}

std::string Render(const Grid& grid, const std::vector<double>& vi, const PpoResult& ppo) {
  static const char* kArrow[4] = {"^", ">", "v", "<"};
  const int64_t n = grid.size();
  auto cell_text = [&](int64_t c, double v, int64_t action) -> std::string {
    if (grid.wall(c)) return "  #### ";
    if (c == grid.goal()) return "     G ";
    return absl::StrFormat(" %5.1f%s", v, action >= 0 ? kArrow[action] : "?");
  };
  // Value iteration's arrows: a neighbour with the best value.
  std::vector<int64_t> vi_arrow(grid.cells(), -1);
  for (int64_t c = 0; c < grid.cells(); ++c) {
    if (grid.wall(c) || c == grid.goal()) continue;
    double best = -std::numeric_limits<double>::infinity();
    for (int64_t a = 0; a < 4; ++a) {
      int64_t nx = grid.Next(c, a);
      if (nx != c && vi[nx] > best) best = vi[nx], vi_arrow[c] = a;
    }
  }
  std::ostringstream out;
  std::string title_vi = "value iteration", title_ppo = "PPO (value net, greedy policy)";
  out << title_vi << std::string(std::max<int64_t>(2, 7 * n + 4 - static_cast<int64_t>(title_vi.size())), ' ')
      << title_ppo << "\n";
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < n; ++c) out << cell_text(r * n + c, vi[r * n + c], vi_arrow[r * n + c]);
    out << "    ";
    for (int64_t c = 0; c < n; ++c) out << cell_text(r * n + c, ppo.values[r * n + c], ppo.greedy[r * n + c]);
    out << "\n";
  }
  return out.str();
}

}  // namespace rlhf::gridworld
