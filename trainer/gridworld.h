// The grid world of the study notes: walls, a goal, -1 per move. Tabular value iteration (a cell's value is
// its best neighbour's value - 1) beside PPO with small policy and value networks trained with the same
// trainer/algo losses the language-model trainers use (GAE, clipped policy loss, clipped value loss,
// entropy bonus). `rlhf gridworld` prints both grids side by side.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/config/config.h"
#include "common/status.h"

namespace rlhf::gridworld {

struct GridWorldConfig {
  int64_t size = 5;                      // the grid is size x size cells
  std::vector<std::string> walls = {"1,1", "1,2", "1,3", "3,1", "3,2", "3,3"};  // "row,col" of wall cells
  std::string goal = "4,4";              // "row,col" of the goal (terminal, value 0)
  int64_t iterations = 300;              // PPO iterations (rollout batch + update)
  int64_t episodes = 64;                 // episodes per rollout batch, from random start cells
  int64_t max_steps = 0;                 // episode length cap; 0 = 2 * size * size
  int64_t hidden = 64;                   // width of the policy and value networks (2 hidden layers, tanh)
  double lr = 3e-3;                      // Adam learning rate
  int64_t ppo_epochs = 4;                // passes over each rollout batch
  int64_t minibatches = 4;               // optimiser steps per pass
  double eps = 0.2;                      // PPO clip (eps_low = eps_high)
  double gamma = 1.0;                    // discount (1: values are minus the steps to the goal)
  double lambda = 0.95;                  // GAE lambda
  double vf_coef = 0.5;                  // weight of the value loss
  double vclip = 0;                      // value clip; 0 = unclipped value loss
  double ent_coef = 0.05;                // entropy bonus at the start, decayed linearly to 0 at 80%
  static const config::Section<GridWorldConfig>& Spec();
};

enum Action { kUp = 0, kRight = 1, kDown = 2, kLeft = 3 };

class Grid {
 public:
  // INVALID_ARGUMENT naming the key for walls or goals outside the grid, a walled goal, or a goal that
  // some open cell cannot reach.
  static absl::StatusOr<Grid> Make(const GridWorldConfig& config);
  int64_t size() const { return n_; }
  int64_t cells() const { return n_ * n_; }
  bool wall(int64_t cell) const { return wall_[cell]; }
  int64_t goal() const { return goal_; }
  // Cell reached by `action` from `cell` (the same cell when a wall or the border is in the way).
  int64_t Next(int64_t cell, int64_t action) const;
  // Open cells other than the goal: the start cells.
  std::vector<int64_t> StartCells() const;

 private:
  int64_t n_ = 0, goal_ = 0;
  std::vector<bool> wall_;
};

// Optimal values V*(cell) = -(steps to the goal), by value iteration; walls hold NaN.
std::vector<double> ValueIteration(const Grid& grid);

struct PpoResult {
  std::vector<double> values;      // the value network's V(cell) (NaN on walls, 0 at the goal)
  std::vector<int64_t> greedy;     // argmax action per cell (-1 on walls and the goal)
  std::vector<double> mean_return; // mean episode return per iteration
};
// Trains PPO on the grid (deterministic for a seed: it runs LibTorch on one thread).
PpoResult TrainPpo(const Grid& grid, const GridWorldConfig& config, uint64_t seed);

// Steps the greedy policy needs from `start` to the goal; -1 if it does not get there within cells() steps.
int64_t GreedySteps(const Grid& grid, const std::vector<int64_t>& greedy, int64_t start);

// The two grids side by side: values and arrows of value iteration, and of PPO.
std::string Render(const Grid& grid, const std::vector<double>& vi, const PpoResult& ppo);

}  // namespace rlhf::gridworld
