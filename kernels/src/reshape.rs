//! A parameter's flat range of a gathered unit, reshaped to the parameter's shape.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::tensor::{Shape, Tensor, backend::Backend};

use crate::flex;

/// `flat` (rank 1) reshaped to `shape`. burn-flex copies a view that does not start at the
/// beginning of its buffer (a parameter's range of a gathered unit) to reshape it; here, on
/// burn-flex or autodiff over it, a contiguous view stays a view of the same buffer.
pub fn reshape_flat<B: Backend, const D: usize>(flat: Tensor<B, 1>, shape: [usize; D]) -> Tensor<B, D> {
    if !flex::is_flex_or_autodiff_flex::<B>() {
        return flat.reshape(shape);
    }
    flex::with_backward(flat, FlatView, |t| {
        let reshaped = if t.layout().is_contiguous() { view(t, shape) } else { t.reshape(Shape::from(shape.to_vec())) };
        (reshaped, ())
    })
}

/// A contiguous tensor's elements as a contiguous tensor of `shape`, same buffer and offset.
fn view<const D: usize>(t: FlexTensor, shape: [usize; D]) -> FlexTensor {
    let offset = t.layout().start_offset();
    let row_major = Layout::contiguous(Shape::from(shape.to_vec()));
    t.with_layout(Layout::new(row_major.shape().clone(), row_major.strides().to_vec(), offset))
}

/// [`reshape_flat`] under autodiff: the gradient flows back flattened.
#[derive(Debug)]
struct FlatView;

impl Backward<Flex, 1> for FlatView {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let numel = grad.layout().num_elements();
            grad.reshape(Shape::from(vec![numel]))
        });
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::TensorData;

    use super::*;

    type Ad = Autodiff<Flex>;

    /// A range in the middle of a flat buffer, as a parameter of a gathered unit: the view and
    /// burn's reshape give the same values, and the same gradient flows back to the buffer.
    #[test]
    fn view_matches_reshape() {
        let values: Vec<f32> = (0..40).map(|i| i as f32 / 7.0 - 2.0).collect();
        let run = |kernel: bool| {
            let flat = Tensor::<Ad, 1>::from_data(TensorData::new(values.clone(), [40]), &Default::default()).require_grad();
            let range = flat.clone().narrow(0, 5, 24);
            let matrix: Tensor<Ad, 2> = if kernel { reshape_flat(range, [4, 6]) } else { range.reshape([4, 6]) };
            let weight = Tensor::<Ad, 1, burn::tensor::Int>::arange(0..24, &Default::default()).float().reshape([4, 6]);
            let grads = (matrix.clone() * weight).sum().backward();
            (matrix.into_data().into_vec::<f32>().unwrap(), flat.grad(&grads).unwrap().into_data().into_vec::<f32>().unwrap())
        };
        assert_eq!(run(true), run(false));
        let untracked: Tensor<Flex, 2> =
            reshape_flat(Tensor::from_data(TensorData::new(values.clone(), [40]), &Default::default()), [5, 8]);
        assert_eq!(untracked.into_data().into_vec::<f32>().unwrap(), values, "the same values without autodiff");
    }
}
