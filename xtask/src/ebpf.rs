pub fn build() -> anyhow::Result<()> {
    Ok(())
}
