//! Cross-service end-to-end tests (`cargo test -p orrery-tests`): each test starts the real `orrery-api`,
//! `orrery-scheduler` and `orrery-worker` binaries as separate processes through the test kit
//! (`orrery-testing`). Per-crate unit and integration tests stay with their crate.
