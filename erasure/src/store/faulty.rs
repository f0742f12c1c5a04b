//! A store wrapper that fails on purpose, for tests of everything above the stores.
//!
//! Faults are chosen by a [`FaultPlan`] that can be changed while the store is in use, and
//! random choices (which byte to flip, which write to fail) come from a seeded generator, so
//! a failing test replays exactly from its seed.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{ChunkStore, StoreError, StoreUsage};

/// What a [`FaultyStore`] does wrong.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Every operation fails as if the backend were unreachable.
    pub down: bool,
    /// Every value read comes back with one byte flipped.
    pub corrupt_reads: bool,
    /// Each write fails with this probability (0.0 to 1.0).
    pub write_failure_probability: f64,
    /// Writes claim success but store nothing (a lying backend).
    pub drop_writes: bool,
    /// Every read answers only after this many milliseconds (a slow or hung backend).
    pub read_delay_ms: u64,
}

#[derive(Debug)]
struct State {
    plan: FaultPlan,
    random: StdRng,
}

/// Wraps a store and injects the faults of its current [`FaultPlan`].
#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ChunkStore>,
    state: Arc<Mutex<State>>,
}

impl FaultyStore {
    /// Wraps `inner`, healthy until a plan is set; `seed` drives every random choice.
    pub fn new(inner: Arc<dyn ChunkStore>, seed: u64) -> Self {
        FaultyStore {
            inner,
            state: Arc::new(Mutex::new(State {
                plan: FaultPlan::default(),
                random: StdRng::seed_from_u64(seed),
            })),
        }
    }

    /// Replaces the fault plan; takes effect for the next operation.
    pub fn set_plan(&self, plan: FaultPlan) {
        if let Ok(mut state) = self.state.lock() {
            state.plan = plan;
        }
    }

    /// The store this one wraps.
    pub fn inner(&self) -> &Arc<dyn ChunkStore> {
        &self.inner
    }

    fn plan(&self) -> FaultPlan {
        self.state
            .lock()
            .map(|state| state.plan.clone())
            .unwrap_or_default()
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.plan().down {
            return Err(StoreError::Backend {
                store: self.url(),
                reason: "connection refused (injected fault)".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ChunkStore for FaultyStore {
    async fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check_up()?;
        let delay_ms = self.plan().read_delay_ms;
        if delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        }
        let mut value = self.inner.get(id).await?;
        if let Some(data) = value.as_mut() {
            if self.plan().corrupt_reads && !data.is_empty() {
                if let Ok(mut state) = self.state.lock() {
                    let index = state.random.gen_range(0..data.len());
                    let bit = 1u8 << state.random.gen_range(0..8);
                    data[index] ^= bit;
                }
            }
        }
        Ok(value)
    }

    async fn put(&self, id: &[u8], data: &[u8]) -> Result<(), StoreError> {
        self.check_up()?;
        let plan = self.plan();
        if plan.write_failure_probability > 0.0 {
            let fail = self
                .state
                .lock()
                .map(|mut state| {
                    state
                        .random
                        .gen_bool(plan.write_failure_probability.clamp(0.0, 1.0))
                })
                .unwrap_or(false);
            if fail {
                return Err(StoreError::Backend {
                    store: self.url(),
                    reason: "write failed (injected fault)".into(),
                });
            }
        }
        if plan.drop_writes {
            return Ok(());
        }
        self.inner.put(id, data).await
    }

    async fn exists(&self, id: &[u8]) -> Result<bool, StoreError> {
        self.check_up()?;
        self.inner.exists(id).await
    }

    async fn delete(&self, id: &[u8]) -> Result<bool, StoreError> {
        self.check_up()?;
        self.inner.delete(id).await
    }

    async fn list(&self, prefix: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.check_up()?;
        self.inner.list(prefix, limit).await
    }

    async fn usage(&self) -> Result<StoreUsage, StoreError> {
        self.check_up()?;
        self.inner.usage().await
    }

    fn url(&self) -> String {
        self.inner.url()
    }

    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
}
