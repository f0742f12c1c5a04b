//! perf: benchmark harness shared by the scripts in `perf/`. Every benchmark runs our
//! system and its peer in the same run and reports the ratio.
