//! Figures in the seed's layout: a row of CT crops, rows of the annotators' masks, then rows of
//! sampled masks, one column per image. Labels use an embedded 8x8 bitmap font (no system fonts).

use std::path::Path;

use anyhow::Result;
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::fsio;

const BG: Rgb<u8> = Rgb([24, 24, 28]);
const LABEL: Rgb<u8> = Rgb([230, 230, 230]);

/// One column's content: a CT crop in [0,1], its annotators' masks and sampled masks.
pub struct Column<'a> {
    pub image: &'a [f32],
    pub labels: Vec<&'a [u8]>,
    pub samples: Vec<&'a [u8]>,
}

/// Stretches a dark scan for display: the 1st..99th percentile maps to black..white.
pub fn display_stretch(img: &[f32]) -> Vec<u8> {
    let mut sorted: Vec<f32> = img.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return vec![0; img.len()];
    }
    sorted.sort_by(f32::total_cmp);
    let lo = sorted[sorted.len() / 100];
    let hi = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    let span = (hi - lo).max(1e-6);
    img.iter().map(|&v| (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

pub fn draw_text(canvas: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: Rgb<u8>) {
    let mut cx = x;
    for ch in text.chars() {
        if let Some(glyph) = font8x8::BASIC_FONTS.get(ch) {
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                let (px, py) = (cx + col * scale + dx, y + row as u32 * scale + dy);
                                if px < canvas.width() && py < canvas.height() {
                                    canvas.put_pixel(px, py, color);
                                }
                            }
                        }
                    }
                }
            }
        }
        cx += 8 * scale;
    }
}

/// Renders the grid; `cell` scales each crop up (nearest neighbour) so small crops stay legible.
pub fn sample_grid(columns: &[Column<'_>], h: usize, w: usize, title: &str) -> RgbImage {
    let rows_labels = columns.iter().map(|c| c.labels.len()).max().unwrap_or(0);
    let rows_samples = columns.iter().map(|c| c.samples.len()).max().unwrap_or(0);
    let zoom = (96 / h.max(w)).max(1) as u32;
    let (cw, ch) = (w as u32 * zoom, h as u32 * zoom);
    let gap = 4u32;
    let margin = 96u32;
    let header = 24u32;
    let rows = 1 + rows_labels + rows_samples;
    let width = margin + columns.len() as u32 * (cw + gap) + gap;
    let height = header + rows as u32 * (ch + gap) + gap;
    let mut canvas = RgbImage::from_pixel(width, height, BG);
    draw_text(&mut canvas, gap, 6, title, 1, LABEL);

    let put = |canvas: &mut RgbImage, col: usize, row: usize, pixel: &dyn Fn(usize) -> Rgb<u8>| {
        let x0 = margin + col as u32 * (cw + gap);
        let y0 = header + row as u32 * (ch + gap);
        for y in 0..ch {
            for x in 0..cw {
                let p = (y / zoom) as usize * w + (x / zoom) as usize;
                canvas.put_pixel(x0 + x, y0 + y, pixel(p));
            }
        }
    };
    for (c, col) in columns.iter().enumerate() {
        let gray = display_stretch(col.image);
        put(&mut canvas, c, 0, &|p| Rgb([gray[p]; 3]));
        for (r, m) in col.labels.iter().enumerate() {
            put(&mut canvas, c, 1 + r, &|p| if m[p] != 0 { Rgb([80, 220, 120]) } else { Rgb([0, 0, 0]) });
        }
        for (r, m) in col.samples.iter().enumerate() {
            put(&mut canvas, c, 1 + rows_labels + r, &|p| if m[p] != 0 { Rgb([250, 170, 60]) } else { Rgb([0, 0, 0]) });
        }
    }
    let label_at = |canvas: &mut RgbImage, row: usize, text: &str| {
        let y = header + row as u32 * (ch + gap) + ch / 2 - 4;
        draw_text(canvas, gap, y, text, 1, LABEL);
    };
    label_at(&mut canvas, 0, "CT");
    for r in 0..rows_labels {
        label_at(&mut canvas, 1 + r, &format!("expert {}", r + 1));
    }
    for r in 0..rows_samples {
        label_at(&mut canvas, 1 + rows_labels + r, &format!("sample {}", r + 1));
    }
    canvas
}

/// Writes a PNG atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    fsio::write_atomic_with(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)?;
        Ok(())
    })
}
