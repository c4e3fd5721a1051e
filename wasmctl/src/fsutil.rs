//! Atomic file replacement: write a temporary file in the target's directory, fsync it, rename
//! it over the target, fsync the directory. Readers see the old file or the new one, never a
//! partial one; on failure the temporary file is removed.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Replace `path` with `data` atomically, with permission bits `mode` (Unix).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".wasmctl-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io("cannot create a temporary file in", dir, e))?;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io("cannot write", tmp.path().to_path_buf(), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("cannot set permissions of", tmp.path().to_path_buf(), e))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.persist(path)
        .map_err(|e| Error::io("cannot rename into place", path, e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Durability of the rename; not all file systems support fsync on a directory.
        let _ = d.sync_all();
    }
    Ok(())
}
