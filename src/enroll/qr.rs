//! QR codes of device configs, for the phone apps' "scan from QR code": in the terminal with
//! UTF-8 half blocks ([`terminal`]) or as a PNG / SVG file ([`png`], [`svg`], [`write_image`]).
//!
//! Pure apart from [`write_image`]. The terminal form packs two module rows into one text row
//! (`▀ ▄ █`), with a 4-module quiet zone, and draws the *light* modules as glyphs so it reads
//! right on the usual dark terminal; with `ansi` it also forces white-on-black colours so a
//! light-themed terminal shows it the same way (as `qrencode -t ansiutf8` does).

use std::path::{Path, PathBuf};

use qrcode::{EcLevel, QrCode};

/// Quiet zone around the code, modules (ISO/IEC 18004 asks for 4).
pub const QUIET_ZONE: usize = 4;
/// Pixels per module in PNG and SVG output.
pub const IMAGE_MODULE_PX: u32 = 8;

/// Why a QR code could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The text does not fit in the largest QR code.
    #[error("the config is too long for a QR code: {0}")]
    TooLong(qrcode::types::QrError),
    /// The file name has an extension we do not write.
    #[error(
        "cannot write {0}: the file name must end in .png or .svg (or .conf for the plain config)"
    )]
    UnsupportedExtension(PathBuf),
    /// PNG encoding failed.
    #[error("PNG encoding failed: {0}")]
    Png(image::ImageError),
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An image format [`write_image`] can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    /// The format named by a file's extension (case-insensitive), if it is an image format.
    pub fn from_path(path: &Path) -> Option<ImageFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(ImageFormat::Png),
            "svg" => Some(ImageFormat::Svg),
            _ => None,
        }
    }
}

fn encode(text: &str, ec: EcLevel) -> Result<QrCode, QrError> {
    QrCode::with_error_correction_level(text.as_bytes(), ec).map_err(QrError::TooLong)
}

/// The module matrix with the quiet zone: `true` = dark, row-major, `side × side`.
fn modules_with_quiet_zone(code: &QrCode) -> (Vec<bool>, usize) {
    let w = code.width();
    let side = w + 2 * QUIET_ZONE;
    let mut m = vec![false; side * side];
    for (i, c) in code.to_colors().into_iter().enumerate() {
        let (x, y) = (i % w, i / w);
        m[(y + QUIET_ZONE) * side + x + QUIET_ZONE] = c == qrcode::Color::Dark;
    }
    (m, side)
}

/// The QR code of `text` as terminal text: one line per two module rows, quiet zone included,
/// light modules drawn as glyphs. `ansi` adds white-on-black colour codes around each line.
///
/// Uses error correction level L, the densest: a screen held to a camera has no smudges, and a
/// smaller code keeps each module at least one character cell wide.
pub fn terminal(text: &str, ansi: bool) -> Result<String, QrError> {
    let code = encode(text, EcLevel::L)?;
    let (m, side) = modules_with_quiet_zone(&code);
    let light = |x: usize, y: usize| y >= side || !m[y * side + x];
    let mut out = String::with_capacity((side + 12) * side.div_ceil(2) * 3);
    for y in (0..side).step_by(2) {
        if ansi {
            out.push_str("\x1b[97;40m");
        }
        for x in 0..side {
            out.push(match (light(x, y), light(x, y + 1)) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        if ansi {
            out.push_str("\x1b[0m");
        }
        out.push('\n');
    }
    Ok(out)
}

/// The QR code of `text` as a PNG (8-bit greyscale, [`IMAGE_MODULE_PX`] per module, quiet zone).
///
/// Uses error correction level M: an image may be printed or shown on a scuffed screen.
pub fn png(text: &str) -> Result<Vec<u8>, QrError> {
    let code = encode(text, EcLevel::M)?;
    let img = code
        .render::<image::Luma<u8>>()
        .module_dimensions(IMAGE_MODULE_PX, IMAGE_MODULE_PX)
        .quiet_zone(true)
        .build();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(QrError::Png)?;
    Ok(out.into_inner())
}

/// The QR code of `text` as an SVG document (starts with `<?xml`).
pub fn svg(text: &str) -> Result<String, QrError> {
    let code = encode(text, EcLevel::M)?;
    Ok(code
        .render::<qrcode::render::svg::Color>()
        .module_dimensions(IMAGE_MODULE_PX, IMAGE_MODULE_PX)
        .quiet_zone(true)
        .build())
}

/// Writes the QR code of `text` to `path` as PNG or SVG, chosen by the extension, with mode 0600
/// (the code holds the device's private key).
pub fn write_image(text: &str, path: &Path) -> Result<ImageFormat, QrError> {
    let format = ImageFormat::from_path(path)
        .ok_or_else(|| QrError::UnsupportedExtension(path.to_path_buf()))?;
    let bytes = match format {
        ImageFormat::Png => png(text)?,
        ImageFormat::Svg => svg(text)?.into_bytes(),
    };
    write_private_file(path, &bytes).map_err(|source| QrError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(format)
}

/// Writes `bytes` to `path`, created (or truncated) with mode 0600.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its old mode on open; tighten it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str =
        "[Interface]\nPrivateKey = kEy/kEy+kEy=\nAddress = 100.96.0.2/32, fd00::2/128\n";

    #[test]
    fn terminal_code_matches_the_module_matrix_with_quiet_zone() {
        let t = terminal(CONFIG, false).unwrap();
        let code = QrCode::with_error_correction_level(CONFIG, EcLevel::L).unwrap();
        let side = code.width() + 2 * QUIET_ZONE;
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), side.div_ceil(2));
        // Rebuild the dark/light matrix from the half blocks and compare module by module.
        let colors = code.to_colors();
        for (row, line) in lines.iter().enumerate() {
            let chars: Vec<char> = line.chars().collect();
            assert_eq!(chars.len(), side);
            for (x, c) in chars.iter().enumerate() {
                let (top, bottom) = match c {
                    '█' => (true, true),
                    '▀' => (true, false),
                    '▄' => (false, true),
                    ' ' => (false, false),
                    other => panic!("unexpected {other:?}"),
                };
                for (y, is_light) in [(2 * row, top), (2 * row + 1, bottom)] {
                    let expect_light = if y >= side
                        || x < QUIET_ZONE
                        || y < QUIET_ZONE
                        || x >= side - QUIET_ZONE
                        || y >= side - QUIET_ZONE
                    {
                        true
                    } else {
                        let w = code.width();
                        colors[(y - QUIET_ZONE) * w + x - QUIET_ZONE] == qrcode::Color::Light
                    };
                    assert_eq!(is_light, expect_light, "module ({x},{y})");
                }
            }
        }
        // Quiet zone: the first two text rows are all light.
        assert!(lines[0].chars().all(|c| c == '█'));
    }

    #[test]
    fn ansi_terminal_code_forces_colours_on_every_line() {
        let t = terminal(CONFIG, true).unwrap();
        assert!(t
            .lines()
            .all(|l| l.starts_with("\x1b[97;40m") && l.ends_with("\x1b[0m")));
    }

    #[test]
    fn png_decodes_to_an_image_of_the_expected_size() {
        let bytes = png(CONFIG).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
        let code = QrCode::with_error_correction_level(CONFIG, EcLevel::M).unwrap();
        let side = (code.width() as u32 + 2 * QUIET_ZONE as u32) * IMAGE_MODULE_PX;
        assert_eq!((img.width(), img.height()), (side, side));
        assert!((200..=2000).contains(&side), "{side}");
        // The top-left finder pattern's corner module is dark, the quiet zone light.
        let g = img.to_luma8();
        let q = QUIET_ZONE as u32 * IMAGE_MODULE_PX;
        assert_eq!(g.get_pixel(0, 0).0[0], 255);
        assert_eq!(g.get_pixel(q + 1, q + 1).0[0], 0);
    }

    #[test]
    fn svg_is_an_svg_document() {
        let s = svg(CONFIG).unwrap();
        assert!(s.starts_with("<?xml") || s.starts_with("<svg"));
        assert!(s.contains("<svg") && s.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn other_extensions_are_refused_and_images_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("x.jpg");
        assert!(matches!(
            write_image(CONFIG, &bad),
            Err(QrError::UnsupportedExtension(_))
        ));
        assert!(!bad.exists());
        let p = dir.path().join("x.PNG");
        assert_eq!(write_image(CONFIG, &p).unwrap(), ImageFormat::Png);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn text_too_long_for_a_qr_code_is_an_error() {
        let long = "x".repeat(5000);
        assert!(matches!(terminal(&long, false), Err(QrError::TooLong(_))));
    }
}
