//! Route prototypes: each route's normalised mean utterance vector, one row of a matrix, so a
//! prompt's similarity to every route is one matrix-vector product.

use crate::config::RouteId;
use crate::kernels::vector::{aligned_zeros, dot, dot_rows};
use ndarray::Array2;

/// One L2-normalised row per route that has utterances, in route order.
#[derive(Debug, Clone, PartialEq)]
pub struct Prototypes {
    /// The route of each row.
    routes: Vec<RouteId>,
    /// `routes x dim`.
    matrix: Array2<f32>,
}

impl Prototypes {
    /// The normalised mean of each route's `vectors` (`owners` gives each vector's route; a
    /// route's vectors are consecutive, as the router lists them). Every vector should have
    /// the first one's length; a stray entry past it is ignored (the index refuses such a
    /// set anyway).
    pub fn new(vectors: &[Vec<f32>], owners: &[RouteId]) -> Prototypes {
        let dim = vectors.first().map_or(0, Vec::len);
        let mut routes: Vec<RouteId> = owners.iter().take(vectors.len()).copied().collect();
        routes.dedup();
        let mut matrix = aligned_zeros(routes.len(), dim);
        let mut rows = matrix.rows_mut().into_iter().peekable();
        let mut current = routes.first().copied();
        for (vector, &route) in vectors.iter().zip(owners) {
            if current != Some(route) {
                rows.next();
                current = Some(route);
            }
            if let Some(row) = rows.peek_mut() {
                row.iter_mut().zip(vector).for_each(|(s, x)| *s += x);
            }
        }
        for mut row in matrix.rows_mut() {
            let norm = row.as_slice().map_or(0.0, |r| dot(r, r)).sqrt().max(1e-12);
            row /= norm;
        }
        Prototypes { routes, matrix }
    }

    /// `query`'s cosine similarity to every prototype (`query` is a unit vector), in route
    /// order; empty for a query of another dimension.
    pub fn similarities(&self, query: &[f32]) -> Vec<(RouteId, f32)> {
        if query.len() != self.matrix.ncols() {
            return Vec::new();
        }
        let sims = dot_rows(self.matrix.view(), query);
        self.routes.iter().copied().zip(sims).collect()
    }

    /// `query`'s similarity to `route`'s prototype; `None` for a route without utterances or
    /// a query of another dimension.
    pub fn similarity(&self, route: RouteId, query: &[f32]) -> Option<f32> {
        let row = self.routes.iter().position(|&r| r == route)?;
        let prototype = self.matrix.row(row).to_slice()?;
        (prototype.len() == query.len()).then(|| dot(prototype, query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn each_route_gets_its_normalised_mean() {
        let vectors = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![3.0, 4.0],
            vec![1.0, 0.0],
        ];
        let owners = [
            RouteId::at(0),
            RouteId::at(0),
            RouteId::at(2),
            RouteId::at(5),
        ];
        let prototypes = Prototypes::new(&vectors, &owners);
        let sims = prototypes.similarities(&[1.0, 0.0]);
        let routes: Vec<RouteId> = sims.iter().map(|s| s.0).collect();
        assert_eq!(routes, [RouteId::at(0), RouteId::at(2), RouteId::at(5)]);
        assert!(close(sims[0].1, std::f32::consts::FRAC_1_SQRT_2));
        assert!(close(sims[1].1, 0.6));
        assert!(close(sims[2].1, 1.0));
        assert!(close(
            prototypes.similarity(RouteId::at(2), &[0.0, 1.0]).unwrap(),
            0.8
        ));
        assert_eq!(prototypes.similarity(RouteId::at(1), &[0.0, 1.0]), None);
    }

    #[test]
    fn a_query_of_another_dimension_has_no_similarities() {
        let prototypes = Prototypes::new(
            &[vec![1.0, 0.0], vec![0.0, 1.0]],
            &[RouteId::at(0), RouteId::at(1)],
        );
        assert!(prototypes.similarities(&[1.0]).is_empty());
        assert_eq!(
            prototypes.similarity(RouteId::at(0), &[1.0, 0.0, 0.0]),
            None
        );
    }
}
