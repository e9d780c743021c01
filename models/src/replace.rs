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

/// Where an output goes, by what `path` names now.
enum Target {
    /// A regular file (or nothing yet): written beside it and renamed over it. A symbolic
    /// link is followed, so the file it names is replaced and the link stays.
    Replace(PathBuf),
    /// A FIFO or a character device (`/dev/null`, `/dev/stdout`, a pipe): written into as it
    /// is. A rename would put a regular file in place of the node (as root, `--out
    /// /dev/null` replaced `/dev/null`).
    Stream,
}

/// What `path` is; an error for what can be neither replaced nor written into.
fn target(path: &Path) -> std::io::Result<Target> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Target::Replace(path.to_path_buf()))
        }
        Err(e) => return Err(e),
    };
    let t = meta.file_type();
    if t.is_file() {
        return Ok(Target::Replace(std::fs::canonicalize(path)?));
    }
    if t.is_fifo() || t.is_char_device() {
        return Ok(Target::Stream);
    }
    let what = if t.is_dir() {
        "a folder"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a socket or other special file"
    };
    Err(std::io::Error::other(format!(
        "is {what}, not a file: give the path of a file to write (or of a FIFO or \
         character device such as /dev/null to stream into)"
    )))
}

/// Writes an output file with `write`, which creates and fills the path it is given.
///
/// A regular file (or an absent one) is written under a temporary name beside it, synced and
/// renamed over it: an error or a crash never leaves a half-written file under the final
/// name, and whoever has the old file open or mapped keeps its contents. On error the
/// temporary file is removed. A FIFO or character device is written into directly; a
/// folder, block device or socket is refused.
pub(crate) fn replace_file<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
    io_error: impl Fn(&Path, std::io::Error) -> E,
) -> Result<(), E> {
    let path = match target(path).map_err(|e| io_error(path, e))? {
        Target::Stream => return write(path),
        Target::Replace(p) => p,
    };
    let tmp = temp_path(&path);
    let done = write(&tmp).and_then(|()| {
        let f = std::fs::File::open(&tmp).map_err(|e| io_error(&tmp, e))?;
        f.sync_all().map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))
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

    fn write_str(s: &'static str) -> impl FnOnce(&Path) -> Result<(), String> {
        move |t| std::fs::write(t, s).map_err(|e| e.to_string())
    }

    fn io(p: &Path, e: std::io::Error) -> String {
        format!("{}: {e}", p.display())
    }

    #[test]
    fn a_fifo_is_streamed_into_and_stays_a_fifo() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let f = fifo.clone();
            std::thread::spawn(move || std::fs::read(f).unwrap())
        };
        replace_file(&fifo, write_str("through the pipe"), io).unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        let t = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(t.is_fifo(), "the FIFO was replaced: {t:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_character_device_is_written_into_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        // A private null device (1, 3) in the temp folder; needs CAP_MKNOD, else skipped.
        let node = dir.path().join("null");
        let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
        let dev = libc::makedev(1, 3);
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) } != 0 {
            eprintln!(
                "mknod not permitted here: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        replace_file(&node, write_str("gone"), io).unwrap();
        let t = std::fs::symlink_metadata(&node).unwrap().file_type();
        assert!(t.is_char_device(), "the device node was replaced: {t:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_folder_is_refused_and_a_link_keeps_pointing_at_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = replace_file(dir.path(), write_str("x"), io).unwrap_err();
        assert!(e.contains("is a folder, not a file"), "{e}");
        let file = dir.path().join("real.bin");
        std::fs::write(&file, b"old").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        replace_file(&link, write_str("new"), io).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
    }
}
