//! Fully connected layers' weights packed once for the AVX-512 product ([`super::avx512`]), in
//! inference, and kept for as long as the weight's buffer lives unchanged. (Not in the browser:
//! there the packing is a smaller share of the slower products, and caching it measured no
//! faster, 347 against 350.5 ms a question.)
//!
//! A weight is packed the second time it is used, so that a single forward pass (one question
//! asked from the command line) does not pay for packing it will never use again: packing
//! MiniLM's 43 MB of weights, fresh memory included, adds about 140 ms to the pass that does it.
//!
//! An entry holds a `Weak` to the Flex buffer it was packed from. That is what makes it safe to
//! reuse: Flex writes into a buffer in place only through `Arc::get_mut` (which refuses while a
//! `Weak` exists) or `Arc::make_mut` (which then moves the bytes to a new buffer and leaves the
//! `Weak` dead), and a buffer's address is not reused while a `Weak` keeps its allocation. So
//! while the `Weak` still upgrades to the weight's buffer, the packed values are the buffer's.
//! An optimizer step on the same parameters (a fine-tuning run that evaluates between steps)
//! therefore moves each weight it updates to a new buffer (one copy of its bytes), and the next
//! evaluation packs again. Entries whose buffer is gone are dropped at every lookup and at every
//! optimizer write ([`forget_replaced`]), so their packed copies do not outlive them for long.
//!
//! The cost: each packed weight is a second copy of it in memory (for BERT-large, 1.2 GB more),
//! in exchange for the packing every product would otherwise do (about 7% of a forward pass).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use burn::backend::flex::FlexTensor;
use burn::tensor::{Bytes, TensorMetadata};

use super::avx512::{self, PackedWeight};
use super::kernels::LinearShape;

/// A weight's buffer and, once it was used twice, the weight packed.
struct Entry {
    buffer: Weak<Bytes>,
    packed: Option<Arc<PackedWeight>>,
}

impl Entry {
    /// Whether its buffer still exists (else its packed copy is of nothing any more).
    fn alive(&self) -> bool {
        self.buffer.strong_count() > 0
    }
}

/// Where a weight lies: its buffer's address, its first element and its shape `[inputs, outputs]`.
type Key = (usize, usize, [usize; 2]);

/// The packed weights of this process.
static PACKED: LazyLock<Mutex<HashMap<Key, Entry>>> = LazyLock::new(Mutex::default);

/// `weight` (`[inputs, outputs]`, its values `values`) packed for a product of `shape`: from the
/// cache, or packed now if this is its second use; `None` at its first use, when the AVX-512
/// product does not take this product (no AVX-512, or a shape the `gemm` crate computes
/// otherwise), or when the weight is a strided view.
pub(super) fn packed(
    weight: &FlexTensor,
    values: &[f32],
    shape: LinearShape,
) -> Option<Arc<PackedWeight>> {
    let LinearShape {
        rows,
        inputs,
        outputs,
    } = shape;
    if !avx512::takes(rows, inputs, outputs) {
        return None;
    }
    let (start, _) = weight.layout().contiguous_offsets()?;
    if weight.shape().dims::<2>() != [inputs, outputs] {
        return None;
    }
    let buffer = weight.data_arc();
    let key = (Arc::as_ptr(&buffer) as usize, start, [inputs, outputs]);
    {
        let mut entries = entries();
        entries.retain(|_, entry| entry.alive());
        // An entry under this address is this buffer's: the `Weak` kept its allocation.
        match entries.get(&key) {
            Some(Entry {
                packed: Some(packed),
                ..
            }) => return Some(Arc::clone(packed)),
            Some(_) => {}
            None => {
                // The first use: remembered, not packed.
                let buffer = Arc::downgrade(&buffer);
                entries.insert(
                    key,
                    Entry {
                        buffer,
                        packed: None,
                    },
                );
                return None;
            }
        }
    }
    // Packed outside the lock: the packing runs on rayon's threads, which may be waiting to
    // take the lock for another product.
    let packed = Arc::new(PackedWeight::new(values, inputs, outputs));
    let entry = Entry {
        buffer: Arc::downgrade(&buffer),
        packed: Some(Arc::clone(&packed)),
    };
    entries().insert(key, entry);
    Some(packed)
}

/// Drops the packed weights whose buffer is gone (replaced by an optimizer step, or dropped).
pub(super) fn forget_replaced() {
    entries().retain(|_, entry| entry.alive());
}

/// The cache, locked (a panic while it was held left nothing half-written: entries are inserted
/// whole).
fn entries() -> MutexGuard<'static, HashMap<Key, Entry>> {
    PACKED.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use burn::backend::flex::Layout;
    use burn::tensor::{DType, Shape};

    use super::*;

    fn weight(values: Vec<f32>, inputs: usize, outputs: usize) -> FlexTensor {
        FlexTensor::new(
            Bytes::from_elems(values),
            Layout::contiguous(Shape::new([inputs, outputs])),
            DType::F32,
        )
    }

    #[test]
    fn a_weight_is_packed_at_its_second_use_and_again_after_it_changes() {
        let shape = LinearShape {
            rows: 100,
            inputs: 8,
            outputs: 70,
        };
        if !avx512::takes(shape.rows, shape.inputs, shape.outputs) {
            eprintln!("no AVX-512 on this CPU: nothing is packed here");
            return;
        }
        let mut tensor = weight(vec![0.5; 8 * 70], 8, 70);
        let values = tensor.storage::<f32>().to_vec();
        assert!(
            packed(&tensor, &values, shape).is_none(),
            "not at its first use"
        );
        let first = packed(&tensor, &values, shape).expect("packed at its second use");
        let again = packed(&tensor, &values, shape).expect("packed");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same buffer is packed once"
        );

        // Written in place, as an optimizer step does: the buffer moves, the entry is stale.
        tensor.storage_mut::<f32>()[0] = 2.0;
        let values = tensor.storage::<f32>().to_vec();
        assert!(
            packed(&tensor, &values, shape).is_none(),
            "a new buffer's first use"
        );
        let after = packed(&tensor, &values, shape).expect("packed");
        assert!(
            !Arc::ptr_eq(&first, &after),
            "a changed weight is packed again"
        );
        assert!(
            tensor.try_storage_mut::<f32>().is_none(),
            "nothing writes over a packed buffer in place"
        );

        // A single row is the `gemm` crate's vector kernel's: not packed.
        let one_row = LinearShape { rows: 1, ..shape };
        assert!(packed(&tensor, &values, one_row).is_none());

        // Once its buffer is gone, the packed copy goes too.
        let before = Arc::strong_count(&after);
        drop(tensor);
        forget_replaced();
        assert_eq!(
            Arc::strong_count(&after),
            before - 1,
            "the entry's copy is dropped"
        );
    }
}
