#include "trainer/gridworld.h"

#include <gtest/gtest.h>

#include <cmath>

namespace rlhf::gridworld {
namespace {

TEST(GridWorld, ValueIterationGivesMinusTheShortestPath) {
  GridWorldConfig cfg;  // 5x5, two wall rows with gaps at alternating ends, goal at 4,4
  auto grid = Grid::Make(cfg);
  ASSERT_TRUE(grid.ok()) << grid.status();
  auto v = ValueIteration(*grid);
  EXPECT_EQ(v[grid->goal()], 0.0);
  EXPECT_EQ(v[0], -8.0);       // 0,0: right along the top, down the right side
  EXPECT_EQ(v[2 * 5 + 0], -6.0);  // 2,0
  EXPECT_EQ(v[4 * 5 + 0], -4.0);  // 4,0
  EXPECT_TRUE(std::isnan(v[1 * 5 + 1]));  // wall
  EXPECT_EQ(grid->Next(0, kUp), 0);       // the border stops a move
  EXPECT_EQ(grid->Next(1 * 5 + 0, kRight), 1 * 5 + 0);  // so does a wall
}

TEST(GridWorld, BadGridsAreRefusedWithTheKey) {
  GridWorldConfig cfg;
  cfg.walls = {"5,0"};
  auto a = Grid::Make(cfg);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("gridworld.walls"), std::string::npos) << a.status();
  cfg.walls = {"4,4"};
  EXPECT_NE(Grid::Make(cfg).status().message().find("the goal is a wall"), std::string::npos);
  cfg.walls = {"0,1", "1,0"};  // 0,0 is boxed in
  auto c = Grid::Make(cfg);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("cell 0,0 cannot reach the goal"), std::string::npos) << c.status();
  cfg.walls = {};
  cfg.goal = "x";
  EXPECT_FALSE(Grid::Make(cfg).ok());
}

// PPO trained with trainer/algo: greedy policy optimal from every start cell, values close to V*.
void ExpectPpoSolves(const GridWorldConfig& cfg, uint64_t seed) {
  auto grid = Grid::Make(cfg);
  ASSERT_TRUE(grid.ok()) << grid.status();
  auto vi = ValueIteration(*grid);
  auto ppo = TrainPpo(*grid, cfg, seed);
  for (int64_t cell : grid->StartCells()) {
    EXPECT_EQ(GreedySteps(*grid, ppo.greedy, cell), static_cast<int64_t>(-vi[cell]))
        << "start " << cell / cfg.size << "," << cell % cfg.size << "\n"
        << Render(*grid, vi, ppo);
    EXPECT_NEAR(ppo.values[cell], vi[cell], 0.25) << "cell " << cell / cfg.size << "," << cell % cfg.size;
  }
  EXPECT_GT(ppo.mean_return.back(), ppo.mean_return.front());
}

TEST(GridWorld, PpoMatchesValueIterationOnTheDefaultGrid) { ExpectPpoSolves(GridWorldConfig{}, 0); }

TEST(GridWorld, PpoMatchesValueIterationOnAMaze) {
  GridWorldConfig cfg;
  cfg.size = 6;
  cfg.walls = {"0,2", "1,2", "2,2", "4,1", "4,2", "4,3", "4,4", "2,4"};
  cfg.goal = "0,5";
  ExpectPpoSolves(cfg, 1);
}

}  // namespace
}  // namespace rlhf::gridworld
