//! Pool upkeep the driver's pool does not do itself: opening the minimum number of
//! connections up front, and closing connections that stayed idle too long.

use std::time::Duration;

use deadpool_postgres::{Pool, PoolError};

/// Open connections until the pool holds at least `min` (they stay pooled, idle).
pub async fn warm_up(pool: &Pool, min: usize) -> Result<(), PoolError> {
    let mut held = Vec::with_capacity(min);
    while pool.status().size < min && held.len() < min {
        held.push(pool.get().await?);
    }
    Ok(())
}

/// Close idle connections unused for longer than `idle_lifetime`, keeping at least `min`
/// connections open. Returns how many were closed. Call it periodically (e.g. every
/// `idle_lifetime / 2`); connections in use are never touched.
pub fn reap_idle(pool: &Pool, idle_lifetime: Duration, min: usize) -> usize {
    let mut keep_anyway = min.saturating_sub(pool.status().size - pool.status().available);
    pool.retain(|_, metrics| {
        if metrics.last_used() < idle_lifetime {
            true
        } else if keep_anyway > 0 {
            keep_anyway -= 1;
            true
        } else {
            false
        }
    })
    .removed
    .len()
}
