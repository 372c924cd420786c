//! Versioned, forward-only schema migrations, embedded in the binary, and their runner.
//!
//! Each file `migrations/NNNN_name.sql` is one migration, applied in its own transaction
//! together with its row in `schema_migrations` (version, name, checksum, applied_at), so a
//! failed migration leaves the database at the previous version. The checksum is the BLAKE3
//! of the file's bytes: editing a migration that a database has already applied makes the
//! runner refuse to touch that database (the fix is a new migration, never an edit).
//! Concurrent runners on one database are serialised by an advisory lock.
//!
//! Migrations need a superuser (PostGIS is an untrusted extension, and the first migration
//! creates the cluster-wide roles). Objects are owned by the `hart_owner` role, not by the
//! superuser that ran them: see docs/SECURITY.md.

use tokio_postgres::Client;

use crate::error::describe;

/// One migration: a version, a name and its SQL.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// BLAKE3 of the SQL text, hex.
    pub fn checksum(&self) -> String {
        blake3::hash(self.sql.as_bytes()).to_hex().to_string()
    }
}

macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration { version: $version, name: $name, sql: include_str!(concat!("../migrations/", $file)) }
    };
}

/// Every migration, in order. Versions are consecutive from 1.
pub static MIGRATIONS: &[Migration] = &[
    migration!(1, "extensions_and_roles", "0001_extensions_and_roles.sql"),
    migration!(2, "hilbert", "0002_hilbert.sql"),
    migration!(3, "atoms", "0003_atoms.sql"),
    migration!(4, "objects_and_ingestion_log", "0004_objects_and_ingestion_log.sql"),
    migration!(5, "row_level_security", "0005_row_level_security.sql"),
    migration!(6, "reconstruct", "0006_reconstruct.sql"),
    migration!(7, "atom_spatial_summary", "0007_atom_spatial_summary.sql"),
    migration!(8, "merge", "0008_merge.sql"),
    migration!(9, "removed_ingestions", "0009_removed_ingestions.sql"),
    migration!(10, "partitionwise_access", "0010_partitionwise_access.sql"),
    migration!(11, "summary_schedule", "0011_summary_schedule.sql"),
    migration!(12, "leaf_packs", "0012_leaf_packs.sql"),
    migration!(13, "merge_plans", "0013_merge_plans.sql"),
    migration!(14, "native_hilbert", "0014_native_hilbert.sql"),
    migration!(15, "merge_by_key", "0015_merge_by_key.sql"),
];

/// The newest version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Advisory lock key serialising migration runners on one database ("hartmigr").
const LOCK_KEY: i64 = 0x6861_7274_6d69_6772;

const CREATE_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version    integer     PRIMARY KEY,
        name       text        NOT NULL,
        checksum   text        NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )";

/// Why migrating failed. Nothing is half-applied: each migration is one transaction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    #[error("database error while {doing}: {detail}")]
    Database {
        doing: &'static str,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("migration {version} ({name}) failed, the database stays at version {previous}: {detail}")]
    Failed {
        version: i32,
        name: &'static str,
        previous: i32,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {version} ({name}) was edited after this database applied it \
         (checksum applied {applied}, now {current}); migrations are forward-only: \
         restore the original file and put the change in a new migration"
    )]
    ChecksumMismatch { version: i32, name: String, applied: String, current: String },
    #[error(
        "the database has migration {version} ({name}) that this build does not know \
         (it knows up to {latest}); use a build at least as new as the database"
    )]
    UnknownVersion { version: i32, name: String, latest: i32 },
    #[error("no migration {0} exists (this build knows 1..={latest})", latest = latest_version())]
    NoSuchTarget(i32),
}

fn db(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    move |source| MigrateError::Database { doing, detail: describe(&source), source }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run, in order.
    pub applied: Vec<i32>,
    /// The database's version after the run.
    pub version: i32,
    /// Whether the Hilbert key runs in C in this database (the `hart_native` extension,
    /// migration 0014); `None` below version 14 or when a run stopped short of the latest.
    pub native_hilbert: Option<bool>,
}

/// State of one known migration in a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationState {
    Pending,
    Applied,
    /// Applied, but the file changed since (the runner will refuse to run).
    Modified,
}

/// One row of [`status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i32,
    pub name: &'static str,
    pub state: MigrationState,
    pub applied_at: Option<std::time::SystemTime>,
}

struct AppliedRow {
    version: i32,
    name: String,
    checksum: String,
    applied_at: std::time::SystemTime,
}

async fn applied_rows(client: &impl tokio_postgres::GenericClient) -> Result<Vec<AppliedRow>, MigrateError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(db("looking for schema_migrations"))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version", &[])
        .await
        .map_err(db("reading schema_migrations"))?;
    Ok(rows
        .iter()
        .map(|r| AppliedRow { version: r.get(0), name: r.get(1), checksum: r.get(2), applied_at: r.get(3) })
        .collect())
}

/// Refuse a database whose history disagrees with `migrations`.
fn verify(migrations: &[Migration], applied: &[AppliedRow]) -> Result<(), MigrateError> {
    for row in applied {
        match migrations.iter().find(|m| m.version == row.version) {
            None => {
                return Err(MigrateError::UnknownVersion {
                    version: row.version,
                    name: row.name.clone(),
                    latest: migrations.last().map_or(0, |m| m.version),
                })
            }
            Some(m) if m.checksum() != row.checksum => {
                return Err(MigrateError::ChecksumMismatch {
                    version: row.version,
                    name: row.name.clone(),
                    applied: row.checksum.clone(),
                    current: m.checksum(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Apply every pending migration.
pub async fn migrate(client: &mut Client) -> Result<MigrationReport, MigrateError> {
    let mut report = migrate_to(client, latest_version()).await?;
    // Every run, not only migration 0014's: a server that gained the extension since (or
    // lost it) gets the key functions repointed. Idempotent, one short transaction.
    let tx = client.transaction().await.map_err(db("starting a transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await.map_err(db("taking the migration lock"))?;
    // Only a member of hart_owner (or a superuser) may repoint the functions; anyone else
    // learns what is in use.
    let native: bool = tx
        .query_one(
            "SELECT CASE WHEN pg_has_role('hart_owner', 'MEMBER') THEN hart_adopt_native() \
             ELSE coalesce(hart_hilbert_native(), false) END",
            &[],
        )
        .await
        .map_err(db("choosing the Hilbert key functions (hart_adopt_native)"))?
        .get(0);
    tx.commit().await.map_err(db("choosing the Hilbert key functions (hart_adopt_native)"))?;
    report.native_hilbert = Some(native);
    Ok(report)
}

/// Apply pending migrations up to and including `target` (for testing upgrades from an
/// older version). Already-applied migrations are checked, never re-run.
pub async fn migrate_to(client: &mut Client, target: i32) -> Result<MigrationReport, MigrateError> {
    run(client, MIGRATIONS, target).await
}

/// The runner over any list of migrations (versions consecutive from 1): [`migrate_to`] with
/// [`MIGRATIONS`] in production, other lists in tests of the runner itself.
pub async fn run(client: &mut Client, migrations: &[Migration], target: i32) -> Result<MigrationReport, MigrateError> {
    if target < 0 || target > migrations.last().map_or(0, |m| m.version) {
        return Err(MigrateError::NoSuchTarget(target));
    }
    let mut report = MigrationReport::default();
    for m in migrations.iter().filter(|m| m.version <= target) {
        let tx = client.transaction().await.map_err(db("starting a migration transaction"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await.map_err(db("taking the migration lock"))?;
        tx.batch_execute(CREATE_TABLE).await.map_err(db("creating schema_migrations"))?;
        let applied = applied_rows(&tx).await?;
        verify(migrations, &applied)?;
        let previous = applied.last().map_or(0, |r| r.version);
        if applied.iter().any(|r| r.version == m.version) {
            report.version = previous;
            tx.rollback().await.map_err(db("ending a migration transaction"))?;
            continue;
        }
        tracing::info!(version = m.version, name = m.name, "applying migration");
        // Migrations may `SET LOCAL ROLE hart_owner`; the bookkeeping row is ours.
        let run = async {
            tx.batch_execute(m.sql).await?;
            tx.batch_execute("RESET ROLE").await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &m.checksum()],
            )
            .await
        };
        if let Err(source) = run.await {
            return Err(MigrateError::Failed {
                version: m.version,
                name: m.name,
                previous,
                detail: describe(&source),
                source,
            });
        }
        tx.commit().await.map_err(|source| MigrateError::Failed {
            version: m.version,
            name: m.name,
            previous,
            detail: describe(&source),
            source,
        })?;
        report.applied.push(m.version);
        report.version = m.version;
    }
    Ok(report)
}

/// Every known migration and whether the database has it. Also fails on a database newer
/// than this build.
pub async fn status(client: &Client) -> Result<Vec<MigrationStatus>, MigrateError> {
    let applied = applied_rows(client).await?;
    if let Some(row) = applied.iter().find(|r| r.version > latest_version()) {
        return Err(MigrateError::UnknownVersion {
            version: row.version,
            name: row.name.clone(),
            latest: latest_version(),
        });
    }
    Ok(MIGRATIONS
        .iter()
        .map(|m| {
            let row = applied.iter().find(|r| r.version == m.version);
            MigrationStatus {
                version: m.version,
                name: m.name,
                state: match row {
                    None => MigrationState::Pending,
                    Some(r) if r.checksum == m.checksum() => MigrationState::Applied,
                    Some(_) => MigrationState::Modified,
                },
                applied_at: row.map(|r| r.applied_at),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_and_files_are_all_registered() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(m.sql.starts_with("--"), "migration {} opens with a comment", m.name);
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let expected: Vec<String> = MIGRATIONS.iter().map(|m| format!("{:04}_{}.sql", m.version, m.name)).collect();
        assert_eq!(files, expected, "every file in migrations/ is in MIGRATIONS, named NNNN_name.sql");
    }

    #[test]
    fn checksum_is_blake3_of_the_text() {
        let m = MIGRATIONS[0];
        assert_eq!(m.checksum(), blake3::hash(m.sql.as_bytes()).to_hex().as_str());
        assert_eq!(m.checksum().len(), 64);
    }
}
