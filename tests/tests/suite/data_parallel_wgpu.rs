//! The data-parallel gradient average on a GPU backend (wgpu on Mesa's lavapipe), where the
//! gradients are laid out for the all-reduce by bert-shaders' copy kernel at aligned offsets
//! instead of concatenated: two ranks (threads of this process, one wgpu device) average
//! gradients of lengths that are and are not multiples of the alignment, and their losses, in
//! float32 and in float16 on the way, against the means computed on the host.

use std::sync::Arc;

use bert_core::distributed::{Collective, DataParallel, LocalGroup};
use bert_core::optim::NamedParam;
use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::tensor::{Tensor, TensorData};

type B = Wgpu;

/// Gradient lengths: aligned, odd-sized, a single element, several copy chunks.
const LENGTHS: [usize; 5] = [64, 130, 1, 9000, 384];

/// Rank `rank`'s gradient `index`: distinct values per rank, tensor and element, exact in float16.
fn gradient(rank: usize, index: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((rank * 7 + index * 3 + i) % 64) as f32 / 8.0 - 4.0)
        .collect()
}

fn host(tensor: Tensor<B, 1>) -> Vec<f32> {
    tensor.into_data().to_vec().unwrap()
}

/// What each rank gets back: its averaged gradients and losses.
fn average_on_two_ranks(reduce_in_half: bool) -> Vec<(Vec<Vec<f32>>, Vec<f32>)> {
    let handles: Vec<_> = LocalGroup::ranks(2)
        .into_iter()
        .map(|rank| {
            std::thread::spawn(move || {
                let device = WgpuDevice::default();
                let r = rank.rank();
                let data_parallel = DataParallel {
                    collective: Arc::new(rank) as Arc<dyn Collective>,
                    reduce_in_half,
                };
                let mut params: Vec<NamedParam<B>> = LENGTHS
                    .iter()
                    .enumerate()
                    .map(|(index, &len)| NamedParam {
                        name: format!("p{index}"),
                        value: Tensor::zeros([len], &device),
                        grad: Tensor::from_data(
                            TensorData::new(gradient(r, index, len), [len]),
                            &device,
                        ),
                    })
                    .collect();
                let mut losses = vec![Tensor::<B, 1>::from_floats(
                    [2.0 * (r as f32 + 1.0)],
                    &device,
                )];
                data_parallel.average(&mut params, &mut losses).unwrap();
                (
                    params.into_iter().map(|p| host(p.grad)).collect(),
                    losses.into_iter().flat_map(host).collect(),
                )
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn two_ranks_average_gradients_laid_out_by_the_copy_kernel() {
    let probe = Tensor::<B, 1>::zeros([1], &WgpuDevice::default());
    assert!(
        bert_shaders::lamb::runs_on(&probe),
        "the kernels run on this wgpu device, so the layout path is the one tested"
    );
    for reduce_in_half in [false, true] {
        for (grads, losses) in average_on_two_ranks(reduce_in_half) {
            for (index, (&len, averaged)) in LENGTHS.iter().zip(&grads).enumerate() {
                let expected: Vec<f32> = gradient(0, index, len)
                    .iter()
                    .zip(gradient(1, index, len))
                    .map(|(a, b)| (a + b) / 2.0)
                    .collect();
                assert_eq!(
                    averaged, &expected,
                    "gradient {index} (half: {reduce_in_half})"
                );
            }
            assert_eq!(losses, [3.0], "half: {reduce_in_half}");
        }
    }
}
