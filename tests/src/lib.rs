//! Integration tests of rapax live in `tests/tests/`: the simulator's fixed seed set, replay,
//! the injected bugs it must find, and named view-change scenarios.
