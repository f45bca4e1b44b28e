#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bert_fuzz::fuzz(bert_fuzz::collective_messages, data));
