//! PostgreSQL/PostGIS backend for Hartonomous: schema migrations, connection settings, pool
//! upkeep and the retry policy for transient database errors.
//!
//! **API boundary:** the schema (tables, functions, policies) is defined only by the SQL files
//! in `migrations/`, applied by [`migrate::migrate`]; Rust code never creates schema objects
//! on the fly. Connection strings are parsed only by [`config`]; retries happen only through
//! [`retry::RetryPolicy`].
//!
//! [`PgStore`] implements the storage interface (`hart-store`) on top of this schema.

pub mod bench;
pub mod config;
pub mod error;
pub mod migrate;
pub mod pool;
pub mod retry;
pub mod store;

pub use config::{ConfigError, ConnectionSettings, PoolSettings, Secret, SslMode};
pub use migrate::{migrate, migrate_to, MigrateError, MigrationReport, MIGRATIONS};
pub use retry::{RetryPolicy, Transient, TransientCause};
pub use store::PgStore;
