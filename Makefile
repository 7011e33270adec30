# Two commands on a fresh machine: `make demo` and `make test`. Each sets up its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test test-lowest lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# PyTorch's CPU build where the machine has it (pip's find-links): 0.9 GB, where PyPI's
	# torch==2.13.0 is a CUDA build with 3.4 GB of nvidia/triton wheels that filled a CI disk
	$(PY) -m pip install -q "torch==2.13.0+cpu" || echo "no CPU build of torch 2.13.0 here: PyPI's is installed"
	$(PY) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) examples/demo.py --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The lowest versions that pyproject.toml allows: uv resolves the dependencies (and the
# `lowest` extra's test tools) with --resolution lowest-direct into a fresh .venv-lowest,
# where a smoke subset of the suite runs. Never torch or keras (uv would fetch a CUDA build).
VENV_LOWEST ?= .venv-lowest
PY_LOWEST := $(VENV_LOWEST)/bin/python
# read/decode (Pillow, simplejpeg, tifffile, scikit-image, scipy), lazy dask graphs (also on
# distributed), store round trips and damage (zarr, numcodecs, crc32c), the v1 golden stores,
# the feed, the writer (and its resume), verify/info/ingest from the CLI, HDF5 convert (h5py)
LOWEST_TESTS := \
	tests/test_decode.py::test_encodings_match_pillow \
	tests/test_decode.py::test_16bit_resize_matches_pillow \
	tests/test_decode.py::test_exif_orientation_matches_pillow \
	tests/test_decode.py::test_draft_within_tolerance \
	tests/test_decode.py::test_volume_zoom_exact_shape_matches_skimage \
	tests/test_decode.py::test_volume_npy_and_tiff_same_size \
	tests/test_decode.py::test_decode_into_equals_decode_file \
	tests/test_read.py::test_imread_matches_per_file_decode \
	tests/test_read.py::test_imread_is_lazy_and_opens_no_file \
	tests/test_read.py::test_imread_skip_leaves_bad_files_out \
	tests/test_read.py::test_imread_volumes \
	tests/test_read.py::test_imread_on_distributed \
	tests/test_store.py::test_roundtrip_matches_plain_zarr \
	tests/test_store.py::test_jpeg_codec_store_roundtrip \
	tests/test_store.py::test_damaged_chunk_is_named_never_zeros \
	tests/test_store.py::test_missing_chunk_is_damage_not_zeros \
	tests/test_store.py::test_all_zero_images_are_stored_not_treated_as_missing \
	tests/test_store.py::test_zip_has_no_duplicate_members_and_is_stored \
	tests/test_store.py::test_to_zarr_on_distributed_equals_local \
	tests/test_jpeg.py::test_round_trip_through_zarr \
	tests/test_jpeg.py::test_decode_chunk_into_equals_zarr \
	tests/test_golden.py::test_golden_v1_opens_with_daskimg \
	tests/test_golden.py::test_golden_v1_opens_with_plain_zarr \
	tests/test_golden.py::test_golden_v1_jpeg_opens \
	tests/test_feed.py::test_every_sample_once_per_epoch \
	tests/test_feed.py::test_every_codec_feeds_the_stored_pixels \
	tests/test_feed.py::test_resume_mid_epoch_reads_only_what_is_left \
	tests/test_feed.py::test_damaged_chunk_stops_the_feed_naming_it \
	tests/test_feed.py::test_sources_imageset_and_dask_arrays \
	tests/test_shuffle.py::test_every_sample_exactly_once_across_consumers_and_workers \
	tests/test_writer.py::test_roundtrip_matches_numpy \
	tests/test_writer.py::test_every_chunk_ends_with_crc32c \
	tests/test_writer.py::test_all_zero_batches_are_stored_not_skipped \
	tests/test_writer.py::test_exception_in_with_block_keeps_a_checkpoint_to_resume \
	tests/test_writer.py::test_resume_checks_arguments_and_resume_false_starts_over \
	tests/test_writer.py::test_dask_arrays_are_computed_in_pieces \
	tests/test_writer.py::test_add_features_to_a_split_store_then_train_a_head \
	tests/test_cli.py::test_verify_names_damaged_chunk \
	tests/test_cli.py::test_info_text_and_json \
	tests/test_cli.py::test_ingest_writes_disjoint_stratified_splits \
	tests/test_convert.py::test_convert_hdf5_shuffled_matches_source \
	tests/test_convert.py::test_verify_and_info_report_a_truncated_zip \
	tests/test_convert.py::test_a_virtual_dataset_with_gaps_is_refused_not_stored_as_zeros \
	tests/test_store.py::test_zstd_chunks_without_their_content_size_are_read_as_plain_zarr_reads_them \
	tests/test_procpool.py::test_image_chunks_are_written_from_the_workers_memory \
	tests/test_distributed.py::test_a_set_persisted_on_a_cluster_since_closed_is_named_not_missing_dependency
# Warnings that only the older allowed releases give (the suite makes warnings errors):
# - scipy<1.16 warns on affine_transform's 1-D matrix, which read/decode.py's _zoom passes;
# - dask<2025.4 warns when a test computes with scheduler="threads" beside its Client.
LOWEST_PYTEST_FLAGS := \
	-W "ignore:The behavior of affine_transform with a 1-D array:UserWarning" \
	-W "ignore:Running on a single-machine scheduler when a distributed client:UserWarning"

test-lowest:
	rm -rf $(VENV_LOWEST)
	$(PYTHON) -m venv $(VENV_LOWEST)
	echo '*' > $(VENV_LOWEST)/.gitignore
	$(PY_LOWEST) -m pip install -q uv
	$(VENV_LOWEST)/bin/uv pip compile -q pyproject.toml --extra lowest \
		--resolution lowest-direct --python $(PY_LOWEST) -o $(VENV_LOWEST)/lowest.txt
	@echo "lowest versions:" $$(grep -E '^[A-Za-z0-9]' $(VENV_LOWEST)/lowest.txt)
	$(VENV_LOWEST)/bin/uv pip install -q --python $(PY_LOWEST) -r $(VENV_LOWEST)/lowest.txt
	$(VENV_LOWEST)/bin/uv pip install -q --python $(PY_LOWEST) --no-deps -e .
	$(PY_LOWEST) -m pytest -q $(LOWEST_PYTEST_FLAGS) $(LOWEST_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/bench_read.py

clean:
	rm -rf $(VENV) $(VENV_LOWEST) demo-out .pytest_cache .mypy_cache .ruff_cache
