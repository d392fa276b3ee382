//! Atomic file writes: a crash or Ctrl-C never leaves a half-written checkpoint or output.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A temporary sibling path in the same directory, so the final rename stays on one filesystem.
/// It keeps the whole extension (`.nii.gz` too): writers that pick a format from it still work.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let (base, ext) = match name.find('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name.as_str(), ""),
    };
    // No dot before the pid: writers that swap the extension (nifti) must keep the whole name.
    path.with_file_name(format!(".{base}-tmp{}{ext}", std::process::id()))
}

/// Whether a file name is one of `temp_sibling`'s (left behind by a killed process).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.split('.').nth(1).is_some_and(|b| b.contains("-tmp"))
}

/// The absolute, resolved form of `p` where it exists, else `p` as given.
pub fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether two paths name the same file or directory (the paths themselves where neither exists).
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Writes `bytes` to `path` through a temp file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    })
}

/// Lets `write` produce the file at a temp path, then renames it into place.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let tmp = temp_sibling(path);
    let result = write(&tmp);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    fs::rename(&tmp, path).with_context(|| format!("moving {} into place at {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_paths_keep_compound_extensions() {
        let t = temp_sibling(Path::new("/a/b/mean.nii.gz"));
        assert_eq!(t.parent(), Some(Path::new("/a/b")));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".mean-tmp") && name.ends_with(".nii.gz"), "{name}");
        assert!(is_temp_name(&name) && !is_temp_name("mean.nii.gz") && !is_temp_name(".hidden"));
        assert!(temp_sibling(Path::new("x")).to_string_lossy().contains(".x-tmp"));
        // A writer that replaces the last extension keeps the temp name.
        let plain = temp_sibling(Path::new("/a/base.nii"));
        let mut swapped = plain.clone();
        swapped.set_extension("");
        assert_eq!(swapped.with_extension("nii"), plain);
    }
}
