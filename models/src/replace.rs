//! Writing a file under its final name only once it is complete.

use std::path::{Path, PathBuf};

/// The temporary name `path` is written under: hidden, beside it (same file system, so the
/// rename is atomic), unique per process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Lets `write` fill a temporary file beside `path`, syncs it and renames it over `path`.
/// An error or a crash never leaves a half-written file under the final name, and whoever
/// has the old file open or mapped keeps its contents. On error the temporary file is removed.
pub(crate) fn replace_file<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
    io_error: impl Fn(&Path, std::io::Error) -> E,
) -> Result<(), E> {
    let tmp = temp_path(path);
    let done = write(&tmp).and_then(|()| {
        let f = std::fs::File::open(&tmp).map_err(|e| io_error(&tmp, e))?;
        f.sync_all().map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("moshid-replace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.bin");
        std::fs::write(&p, b"old").unwrap();
        let r: Result<(), String> = replace_file(
            &p,
            |t| {
                std::fs::write(t, b"half").unwrap();
                Err("boom".into())
            },
            |_, e| e.to_string(),
        );
        assert_eq!(r, Err("boom".into()));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let r: Result<(), String> = replace_file(
            &p,
            |t| std::fs::write(t, b"new").map_err(|e| e.to_string()),
            |_, e| e.to_string(),
        );
        assert_eq!(r, Ok(()));
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
