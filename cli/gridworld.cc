// rlhf gridworld: value iteration beside PPO on the grid world of the study notes.
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>

#include "cli/command.h"
#include "trainer/gridworld.h"

namespace rlhf::cli {

Command GridWorldCommand() {
  Command c;
  c.name = "gridworld";
  c.help = "train PPO on a grid world and print it beside tabular value iteration";
  c.add_sections = [](config::Schema& s) { gridworld::GridWorldConfig::Spec().Register(s); };
  c.flags = {
      {"size", "gridworld.size", "grid size N (N x N)"},
      {"walls", "gridworld.walls", "wall cells: \"r,c;r,c;...\"", false, false, true},
      {"goal", "gridworld.goal", "goal cell \"r,c\""},
      {"iterations", "gridworld.iterations", "PPO iterations"},
      {"seed", "run.seed", "random seed"},
  };
  c.body = [](const Context& ctx) -> absl::Status {
    auto cfg = gridworld::GridWorldConfig::Spec().Read(ctx.config);
    ASSIGN_OR_RETURN(auto grid, gridworld::Grid::Make(cfg));
    auto vi = gridworld::ValueIteration(grid);
    spdlog::info("gridworld: {}x{} grid, {} open cells; training PPO for {} iterations", cfg.size, cfg.size,
                 grid.StartCells().size() + 1, cfg.iterations);
    auto ppo = gridworld::TrainPpo(grid, cfg, static_cast<uint64_t>(ctx.run.seed));
    std::printf("%s\n", gridworld::Render(grid, vi, ppo).c_str());
    int64_t optimal = 0, total = 0;
    double max_err = 0;
    for (int64_t cell : grid.StartCells()) {
      ++total;
      optimal += gridworld::GreedySteps(grid, ppo.greedy, cell) == static_cast<int64_t>(-vi[cell]);
      max_err = std::max(max_err, std::fabs(ppo.values[cell] - vi[cell]));
    }
    std::printf("PPO greedy policy optimal from %lld / %lld start cells; max |V_ppo - V*| = %.3f; "
                "mean return first / last iteration: %.2f / %.2f\n",
                static_cast<long long>(optimal), static_cast<long long>(total), max_err, ppo.mean_return.front(),
                ppo.mean_return.back());
    return absl::OkStatus();
  };
  return c;
}

}  // namespace rlhf::cli
