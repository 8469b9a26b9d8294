//! A 2D image stored row-major: `data[y * width + x]`.

#[derive(Debug, Clone, PartialEq)]
pub struct Plane<T> {
    pub width: usize,
    pub height: usize,
    pub data: Vec<T>,
}

impl<T: Copy> Plane<T> {
    pub fn filled(width: usize, height: usize, value: T) -> Self {
        Self {
            width,
            height,
            data: vec![value; width * height],
        }
    }

    #[inline]
    pub fn get(&self, x: usize, y: usize) -> T {
        self.data[y * self.width + x]
    }

    #[inline]
    pub fn set(&mut self, x: usize, y: usize, v: T) {
        self.data[y * self.width + x] = v;
    }

    /// Value at integer coordinates, or `fill` outside the plane.
    #[inline]
    pub fn get_or(&self, x: isize, y: isize, fill: T) -> T {
        if x < 0 || y < 0 || x >= self.width as isize || y >= self.height as isize {
            fill
        } else {
            self.data[y as usize * self.width + x as usize]
        }
    }

    /// Nearest-neighbour sample at pixel-centre coordinates.
    #[inline]
    pub fn sample_nearest(&self, x: f32, y: f32, fill: T) -> T {
        self.get_or(x.round() as isize, y.round() as isize, fill)
    }
}

impl Plane<f32> {
    /// Bilinear sample at pixel-centre coordinates; `fill` outside.
    #[inline]
    pub fn sample_linear(&self, x: f32, y: f32, fill: f32) -> f32 {
        let x0 = x.floor();
        let y0 = y.floor();
        let fx = x - x0;
        let fy = y - y0;
        let (xi, yi) = (x0 as isize, y0 as isize);
        let a = self.get_or(xi, yi, fill);
        let b = self.get_or(xi + 1, yi, fill);
        let c = self.get_or(xi, yi + 1, fill);
        let d = self.get_or(xi + 1, yi + 1, fill);
        (a * (1.0 - fx) + b * fx) * (1.0 - fy) + (c * (1.0 - fx) + d * fx) * fy
    }

    pub fn min_max(&self) -> (f32, f32) {
        self.data
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            })
    }
}
