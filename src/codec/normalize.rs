//! `(x - mean) / std` before quantization (`[models.input] mean`/`std`),
//! per innermost element: one value for all, or one per element of the
//! innermost dimension.

use crate::config::Normalize;

pub fn normalize(values: &mut [f32], n: &Normalize) {
    match (n.mean.as_slice(), n.std.as_slice()) {
        ([mean], [std]) => {
            for v in values.iter_mut() {
                *v = (*v - mean) / std;
            }
        }
        (mean, std) => {
            // Both lengths are 1 or the innermost dimension (checked at
            // load); a length-1 side repeats.
            let inner = mean.len().max(std.len());
            for (i, v) in values.iter_mut().enumerate() {
                let k = i % inner;
                let m = mean.get(k).or(mean.first()).copied().unwrap_or(0.0);
                let s = std.get(k).or(std.first()).copied().unwrap_or(1.0);
                *v = (*v - m) / s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_or_one_per_innermost_element() {
        let mut v = [1.0, 2.0, 3.0, 4.0];
        normalize(
            &mut v,
            &Normalize {
                mean: vec![1.0],
                std: vec![2.0],
            },
        );
        assert_eq!(v, [0.0, 0.5, 1.0, 1.5]);
        let mut v = [1.0, 2.0, 3.0, 4.0];
        normalize(
            &mut v,
            &Normalize {
                mean: vec![1.0, 2.0],
                std: vec![1.0],
            },
        );
        assert_eq!(v, [0.0, 0.0, 2.0, 2.0]);
        let mut v = [1.0, 2.0, 3.0, 4.0];
        normalize(
            &mut v,
            &Normalize {
                mean: vec![0.0],
                std: vec![1.0, 4.0],
            },
        );
        assert_eq!(v, [1.0, 0.5, 3.0, 1.0]);
    }
}
