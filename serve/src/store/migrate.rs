//! `streampulse migrate` and start-up migration: applies `sql/NNN_*.sql` in order, each once per
//! schema, each in its own transaction, recorded in `schema_migrations`.
//!
//! The target schema is a flag (`--pg-schema`, default `public`), so a replay can build fresh tables
//! beside the live ones and analysts can compare them.

use anyhow::Context;
use postgres::Client;

/// The migrations, in order, compiled into the binary.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "001_core", include_str!("../../../sql/001_core.sql")),
    (2, "002_views", include_str!("../../../sql/002_views.sql")),
    (
        3,
        "003_roles_and_retention",
        include_str!("../../../sql/003_roles_and_retention.sql"),
    ),
    (
        4,
        "004_revisions",
        include_str!("../../../sql/004_revisions.sql"),
    ),
    (
        5,
        "005_episodes_and_notifications",
        include_str!("../../../sql/005_episodes_and_notifications.sql"),
    ),
    (
        6,
        "006_baselines_and_forecasts",
        include_str!("../../../sql/006_baselines_and_forecasts.sql"),
    ),
];

/// A schema name we are willing to splice into SQL (identifiers cannot be bound as parameters).
pub fn check_schema_name(schema: &str) -> anyhow::Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    anyhow::ensure!(
        ok,
        "schema name {schema:?} must match [a-z_][a-z0-9_]* (at most 63 characters)"
    );
    Ok(())
}

/// Creates `schema` if needed, points the session's search path at it, and applies what is missing.
/// Returns how many migrations were applied.
pub fn migrate(client: &mut Client, schema: &str) -> anyhow::Result<usize> {
    check_schema_name(schema)?;
    // Processes of a cluster start together and all migrate: one at a time per schema, from the
    // schema's creation on (two concurrent `CREATE SCHEMA IF NOT EXISTS` can collide).
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .with_context(|| format!("preparing schema {schema}"))?;
    tx.commit()?;
    client.batch_execute(&format!("SET search_path TO {schema}"))?;
    let mut applied = 0;
    for &(version, name, sql) in MIGRATIONS {
        let mut tx = client.transaction()?;
        // Serialise concurrent migrators (two processes starting at once) per schema.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])?;
        let done: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)",
                &[&version],
            )?
            .get(0);
        if done {
            continue;
        }
        tx.batch_execute(sql)
            .with_context(|| format!("applying migration {name}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )?;
        tx.commit()?;
        log::info!("applied migration {name} to schema {schema}");
        applied += 1;
    }
    Ok(applied)
}
