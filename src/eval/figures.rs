//! Figures in the seed's layout: a row of CT crops, rows of the annotators' masks, then rows of
//! sampled masks, one column per image. Labels use an embedded 8x8 bitmap font (no system fonts).

use std::path::Path;

use anyhow::Result;
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::fsio;

const BG: Rgb<u8> = Rgb([24, 24, 28]);
const LABEL: Rgb<u8> = Rgb([230, 230, 230]);

/// One column's content: a CT crop in [0,1], its annotators' masks, sampled masks and
/// optional heat maps (values in [0,1], e.g. mean probability and entropy).
pub struct Column<'a> {
    pub image: &'a [f32],
    pub labels: Vec<&'a [u8]>,
    pub samples: Vec<&'a [u8]>,
    pub heat: Vec<Vec<f32>>,
}

/// How the grid draws masks and what the heat-map rows are called.
#[derive(Debug, Clone, Default)]
pub struct GridOptions {
    /// Masks as contours over the CT instead of white-on-black.
    pub overlay: bool,
    pub heat_labels: Vec<String>,
}

/// Stretches a dark scan for display: the 1st..99th percentile maps to black..white.
pub fn display_stretch(img: &[f32]) -> Vec<u8> {
    crate::data::intensity::percentile_normalize(img, 1.0, 99.0).iter().map(|&v| (v * 255.0).round() as u8).collect()
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

/// A perceptually ordered colour map (viridis control points), t in [0,1].
pub fn viridis(t: f32) -> Rgb<u8> {
    const STOPS: [[f32; 3]; 5] = [[68.0, 1.0, 84.0], [59.0, 82.0, 139.0], [33.0, 145.0, 140.0], [94.0, 201.0, 98.0], [253.0, 231.0, 37.0]];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (STOPS.len() - 1) as f32;
    let i = (t as usize).min(STOPS.len() - 2);
    let f = t - i as f32;
    let c = |k: usize| (STOPS[i][k] + f * (STOPS[i + 1][k] - STOPS[i][k])).round() as u8;
    Rgb([c(0), c(1), c(2)])
}

/// Pixels of `mask` with a 4-neighbour outside it.
pub fn contour(mask: &[u8], h: usize, w: usize) -> Vec<bool> {
    let at = |y: isize, x: isize| y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w && mask[y as usize * w + x as usize] != 0;
    (0..h * w)
        .map(|p| {
            let (y, x) = ((p / w) as isize, (p % w) as isize);
            at(y, x) && !(at(y - 1, x) && at(y + 1, x) && at(y, x - 1) && at(y, x + 1))
        })
        .collect()
}

/// Renders the grid: CT row, annotator rows, sample rows, heat-map rows with a colour bar.
/// Small crops are scaled up (nearest neighbour) so they stay legible.
pub fn sample_grid(columns: &[Column<'_>], h: usize, w: usize, title: &str, opts: &GridOptions) -> RgbImage {
    let rows_labels = columns.iter().map(|c| c.labels.len()).max().unwrap_or(0);
    let rows_samples = columns.iter().map(|c| c.samples.len()).max().unwrap_or(0);
    let rows_heat = columns.iter().map(|c| c.heat.len()).max().unwrap_or(0);
    let zoom = (96 / h.max(w)).max(1) as u32;
    let (cw, ch) = (w as u32 * zoom, h as u32 * zoom);
    let gap = 4u32;
    let margin = 96u32;
    let header = 24u32;
    let bar = if rows_heat > 0 { 56u32 } else { 0 };
    let rows = 1 + rows_labels + rows_samples + rows_heat;
    let width = (margin + columns.len() as u32 * (cw + gap) + gap + bar).max(8 * title.chars().count() as u32 + 2 * gap);
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
    let draw_mask = |canvas: &mut RgbImage, col: usize, row: usize, m: &[u8], gray: &[u8], color: Rgb<u8>| {
        if opts.overlay {
            let edge = contour(m, h, w);
            put(canvas, col, row, &|p| if edge[p] { color } else { Rgb([gray[p]; 3]) });
        } else {
            put(canvas, col, row, &|p| if m[p] != 0 { color } else { Rgb([0, 0, 0]) });
        }
    };
    for (c, col) in columns.iter().enumerate() {
        let gray = display_stretch(col.image);
        put(&mut canvas, c, 0, &|p| Rgb([gray[p]; 3]));
        for (r, m) in col.labels.iter().enumerate() {
            draw_mask(&mut canvas, c, 1 + r, m, &gray, Rgb([80, 220, 120]));
        }
        for (r, m) in col.samples.iter().enumerate() {
            draw_mask(&mut canvas, c, 1 + rows_labels + r, m, &gray, Rgb([250, 170, 60]));
        }
        for (r, heat) in col.heat.iter().enumerate() {
            put(&mut canvas, c, 1 + rows_labels + rows_samples + r, &|p| viridis(heat[p]));
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
    for r in 0..rows_heat {
        let text = opts.heat_labels.get(r).cloned().unwrap_or_else(|| format!("map {}", r + 1));
        label_at(&mut canvas, 1 + rows_labels + rows_samples + r, &text);
    }
    if rows_heat > 0 {
        // Colour bar beside the heat rows: 1 at the top, 0 at the bottom.
        let x0 = width - bar + 8;
        let y0 = header + (1 + rows_labels + rows_samples) as u32 * (ch + gap);
        let span = rows_heat as u32 * (ch + gap) - gap;
        for y in 0..span {
            let color = viridis(1.0 - y as f32 / (span - 1).max(1) as f32);
            for x in 0..12 {
                canvas.put_pixel(x0 + x, y0 + y, color);
            }
        }
        draw_text(&mut canvas, x0 + 16, y0, "1", 1, LABEL);
        draw_text(&mut canvas, x0 + 16, y0 + span / 2 - 4, ".5", 1, LABEL);
        draw_text(&mut canvas, x0 + 16, y0 + span - 8, "0", 1, LABEL);
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

/// Rows of grayscale images in [0,1], each row labelled; for GAN progress figures.
pub fn image_rows(rows: &[(String, Vec<Vec<f32>>)], h: usize, w: usize, title: &str) -> RgbImage {
    let zoom = (96 / h.max(w)).max(1) as u32;
    let (cw, ch) = (w as u32 * zoom, h as u32 * zoom);
    let (gap, margin, header) = (4u32, 96u32, 24u32);
    let cols = rows.iter().map(|r| r.1.len()).max().unwrap_or(0) as u32;
    let width = (margin + cols * (cw + gap) + gap).max(8 * title.chars().count() as u32 + 2 * gap);
    let height = header + rows.len() as u32 * (ch + gap) + gap;
    let mut canvas = RgbImage::from_pixel(width, height, BG);
    draw_text(&mut canvas, gap, 6, title, 1, LABEL);
    for (r, (label, images)) in rows.iter().enumerate() {
        let y0 = header + r as u32 * (ch + gap);
        draw_text(&mut canvas, gap, y0 + ch / 2 - 4, label, 1, LABEL);
        for (c, img) in images.iter().enumerate() {
            let x0 = margin + c as u32 * (cw + gap);
            for y in 0..ch {
                for x in 0..cw {
                    let v = img[(y / zoom) as usize * w + (x / zoom) as usize];
                    canvas.put_pixel(x0 + x, y0 + y, Rgb([(v.clamp(0.0, 1.0) * 255.0).round() as u8; 3]));
                }
            }
        }
    }
    canvas
}
