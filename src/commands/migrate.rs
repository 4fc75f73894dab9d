//! `notellm migrate`: apply the store's schema migrations and exit.

use anyhow::{Context, Result};

use crate::cli::StoreArgs;

pub fn run(a: StoreArgs) -> Result<()> {
    super::runtime()?.block_on(async {
        std::fs::create_dir_all(&a.data_dir).with_context(|| format!("creating {}", a.data_dir.display()))?;
        let url = a.database_url();
        let opts = notellm_store::StoreOptions { schema: a.database_schema.clone(), ..Default::default() };
        let report = notellm_store::migrate(url.as_deref(), &a.data_dir, &opts).await?;
        eprintln!("migrations: {report:?}");
        Ok(())
    })
}
