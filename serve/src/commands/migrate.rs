//! `streampulse migrate`: applies the SQL migrations to a schema (`run` does the same at start-up).

use crate::cli::MigrateArgs;
use crate::store::{migrate, Database};

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let url = args
        .postgres
        .postgres
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--postgres URL is required"))?;
    let db = Database::new(url, &args.postgres.pg_schema)?;
    let mut client = db.connect()?;
    let applied = migrate(&mut client, &db.schema)?;
    log::info!(
        "{} is up to date ({applied} migrations applied)",
        db.display()
    );
    Ok(())
}
