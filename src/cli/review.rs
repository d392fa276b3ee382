//! `apunet review DIR`: the review page for a folder `eval` or `predict` wrote.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::eval::publish;

#[derive(Args, Debug)]
pub struct ReviewArgs {
    /// A folder written by `apunet eval`, or one scan's folder written by `apunet predict`
    /// (inputs.npz, samples.npz, review.json).
    pub dir: PathBuf,
    /// The page to write [default: DIR/review.html].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Open the page in the default browser.
    #[arg(long)]
    pub open: bool,
}

pub fn review_cmd(a: ReviewArgs) -> Result<()> {
    let done = publish::rebuild(&a.dir, a.out.as_deref())?;
    crate::say!("wrote {} ({} {})", done.page.display(), done.cases, if done.volume { "slices" } else { "cases" });
    if a.open {
        publish::open_in_browser(&done.page);
    }
    Ok(())
}
