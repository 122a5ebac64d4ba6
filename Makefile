# qtool — `make demo` and `make test` work on a fresh Debian machine with Swift installed.
SHELL      := /bin/bash
SWIFT      ?= swift
VENV       ?= .venv
PYTHON     := $(VENV)/bin/python
QTOOL      := .build/release/qtool
DEMO       := .demo
APT_DEPS   := libhdf5-dev libzstd-dev libopenblas-dev pkg-config strace
export OPENBLAS_NUM_THREADS ?= 1

FUZZ_TIME    ?= 60
FUZZ_TARGETS := json safetensors nf4 bnb adapter hdf5 tokenizer model gguf
FUZZ_BIN     := .build-fuzz/debug/qtool-fuzz

# llama.cpp for `make interop` (never committed): the release the pinned llama-cpp-python sdist vendors
# (fixtures/generate/gguf_reference.py fetches it into .cache), built into .cache/llama.cpp-build.
# LLAMA_CPP_BIN=folder uses an existing build's binaries instead (llama-tokenize, llama-perplexity,
# llama-quantize), LLAMA_GREEDY_IDS=path an existing build of Tests/Interop/llama_greedy_ids.cpp.
LLAMA_CPP_BUILD := .cache/llama.cpp-build
ifeq ($(LLAMA_CPP_BIN),)
LLAMA_CPP_BIN   := $(LLAMA_CPP_BUILD)/bin
INTEROP_LLAMA   := llama-cpp
endif
LLAMA_GREEDY_IDS ?= $(LLAMA_CPP_BIN)/llama-greedy-ids
LLAMA_CPP_CMAKE := -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=OFF \
                   -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF
LLAMA_CPP_TOOLS := llama-tokenize llama-perplexity llama-quantize

.PHONY: all setup build test demo bench interop fixtures venv manifest clean fuzz fuzz-build fuzz-ci lint llama-cpp

all: build

## setup: install the C libraries qtool links (zstd, HDF5, OpenBLAS) when missing
setup:
	@missing=""; for p in $(APT_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## build: release build of the qtool binary (Swift's runtime linked in: a start in half the time,
## ~15 ms less for every command, and one file to copy)
build: setup
	$(SWIFT) build -c release --product qtool --static-swift-stdlib

## test: every test, against the committed fixtures (no Python needed)
test: setup
	$(SWIFT) test

## lint: the code as .swift-format lays it out (`swift format -i -r Sources Tests Package.swift` fixes it)
lint:
	$(SWIFT) format lint --strict -r Sources Tests Package.swift

## demo: the main job on the bundled model
demo: build
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@echo "== qtool inspect fixtures/tiny-llama"
	@$(QTOOL) inspect fixtures/tiny-llama
	@echo
	@echo "== qtool convert fixtures/tiny-llama $(DEMO)/tiny-llama-f32 --dtype f32 --max-shard-size 2MB"
	@$(QTOOL) convert fixtures/tiny-llama $(DEMO)/tiny-llama-f32 --dtype f32 --max-shard-size 2MB
	@$(QTOOL) convert $(DEMO)/tiny-llama-f32 $(DEMO)/tiny-llama-bf16.safetensors --dtype bf16 --quiet
	@cmp $(DEMO)/tiny-llama-bf16.safetensors fixtures/tiny-llama/model.safetensors \
	  && echo "bf16 -> f32 (sharded) -> bf16 gives back transformers' model.safetensors byte for byte"
	@echo
	@echo "== qtool quantize fixtures/tiny-llama $(DEMO)/tiny-llama.nf4 --error"
	@$(QTOOL) quantize fixtures/tiny-llama $(DEMO)/tiny-llama.nf4 --error
	@echo "== qtool quantize fixtures/tiny-llama $(DEMO)/tiny-llama-bnb --format bnb"
	@$(QTOOL) quantize fixtures/tiny-llama $(DEMO)/tiny-llama-bnb --format bnb
	@cmp $(DEMO)/tiny-llama-bnb/model.safetensors fixtures/tiny-llama-bnb-nf4/model.safetensors \
	  && echo "the bitsandbytes folder is byte for byte what transformers + bitsandbytes save for this model"
	@echo
	@echo "== qtool inspect $(DEMO)/tiny-llama.nf4 (last lines)"
	@$(QTOOL) inspect $(DEMO)/tiny-llama.nf4 | tail -2
	@echo
	@echo "== qtool dequantize $(DEMO)/tiny-llama.nf4 $(DEMO)/tiny-llama-restored"
	@$(QTOOL) dequantize $(DEMO)/tiny-llama.nf4 $(DEMO)/tiny-llama-restored
	@echo
	@echo "== qtool merge fixtures/tiny-llama --adapter fixtures/lora/lora --dry-run (first lines)"
	@$(QTOOL) merge fixtures/tiny-llama --adapter fixtures/lora/lora --dry-run | head -4
	@echo "== qtool merge fixtures/tiny-llama --adapter fixtures/lora/lora -o $(DEMO)/tiny-llama-merged"
	@$(QTOOL) merge fixtures/tiny-llama --adapter fixtures/lora/lora -o $(DEMO)/tiny-llama-merged
	@echo "== qtool merge $(DEMO)/tiny-llama.nf4 --adapter fixtures/lora/lora -o $(DEMO)/tiny-llama-merged.nf4"
	@$(QTOOL) merge $(DEMO)/tiny-llama.nf4 --adapter fixtures/lora/lora -o $(DEMO)/tiny-llama-merged.nf4
	@echo "== qtool merge $(DEMO)/tiny-llama-bnb --adapter fixtures/lora/lora -o $(DEMO)/tiny-llama-bnb-merged"
	@$(QTOOL) merge $(DEMO)/tiny-llama-bnb --adapter fixtures/lora/lora -o $(DEMO)/tiny-llama-bnb-merged
	@echo
	@echo "== The QLoRA pipeline on fixtures/models/llama-gqa (random weights: the loss falls, the words are noise)"
	@echo "-- qtool quantize fixtures/models/llama-gqa $(DEMO)/llama-gqa.nf4"
	@$(QTOOL) quantize fixtures/models/llama-gqa $(DEMO)/llama-gqa.nf4
	@echo "-- qtool eval $(DEMO)/llama-gqa.nf4 --data fixtures/finetune/eval.jsonl   (before training)"
	@$(QTOOL) eval $(DEMO)/llama-gqa.nf4 --data fixtures/finetune/eval.jsonl --quiet
	@echo "-- qtool finetune $(DEMO)/llama-gqa.nf4 --data fixtures/finetune/train.jsonl --output $(DEMO)/adapter --steps 60 ..."
	@$(QTOOL) finetune $(DEMO)/llama-gqa.nf4 --data fixtures/finetune/train.jsonl --output $(DEMO)/adapter --steps 60 \
	  --batch-size 2 --grad-accum 2 --seq-len 64 --rank 8 --alpha 16 --lr 1e-2 --schedule cosine --warmup-steps 3 \
	  --eval-data fixtures/finetune/eval.jsonl --eval-every 20 --log-every 10 --save-every 30
	@echo "   $(DEMO)/adapter: $$(ls $(DEMO)/adapter | tr '\n' ' ')"
	@echo "-- qtool eval $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter --data fixtures/finetune/eval.jsonl   (after)"
	@$(QTOOL) eval $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter --data fixtures/finetune/eval.jsonl --quiet
	@echo "-- qtool generate $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter --prompt 'The library' --max-tokens 16"
	@$(QTOOL) generate $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter --prompt "The library" --max-tokens 16 --quiet; echo
	@echo "-- qtool merge $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter -o $(DEMO)/llama-gqa-tuned.nf4, then its eval"
	@$(QTOOL) merge $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter -o $(DEMO)/llama-gqa-tuned.nf4
	@$(QTOOL) eval $(DEMO)/llama-gqa-tuned.nf4 --data fixtures/finetune/eval.jsonl --quiet
	@echo "   (the merged model is requantized to NF4, so its loss is near, not equal to, the adapter's)"
	@echo "-- qtool verify $(DEMO)/llama-gqa-tuned.nf4 --base $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter --data fixtures/finetune/eval.jsonl ..."
	@$(QTOOL) verify $(DEMO)/llama-gqa-tuned.nf4 --base $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter \
	  --data fixtures/finetune/eval.jsonl --max-seq-len 64 --min-update-cosine 0.5 --max-kld 0.1 --junit $(DEMO)/verify.xml
	@echo "   exit status 0: every check held (1 would fail a CI job); JUnit report in $(DEMO)/verify.xml"
	@echo "-- qtool merge $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter -o $(DEMO)/llama-gqa-tuned.gguf   (for llama.cpp / Ollama)"
	@$(QTOOL) merge $(DEMO)/llama-gqa.nf4 --adapter $(DEMO)/adapter -o $(DEMO)/llama-gqa-tuned.gguf
	@$(QTOOL) inspect $(DEMO)/llama-gqa-tuned.gguf | grep -E "general.architecture|general.file_type|tokenizer.ggml.(model|tokens)|blk.0.attn_q.weight|tensors,"
	@echo "-- qtool convert $(DEMO)/adapter $(DEMO)/adapter.gguf --base fixtures/models/llama-gqa   (llama.cpp --lora)"
	@$(QTOOL) convert $(DEMO)/adapter $(DEMO)/adapter.gguf --base fixtures/models/llama-gqa
	@echo
	@echo "sizes:"
	@du -b fixtures/tiny-llama/model.safetensors $(DEMO)/tiny-llama.nf4 $(DEMO)/tiny-llama-bnb/model.safetensors \
	  $(DEMO)/tiny-llama-restored/model.safetensors $(DEMO)/tiny-llama-merged/model.safetensors $(DEMO)/tiny-llama-merged.nf4 | awk '{printf "  %10d  %s\n", $$1, $$2}'

## fuzz-build: the libFuzzer executable (address sanitizer), and the release qtool its HDF5 target starts
fuzz-build: build
	@QTOOL_FUZZ=1 $(SWIFT) build --build-path .build-fuzz -c debug --product qtool-fuzz -Xswiftc -sanitize=fuzzer,address 2>&1 \
	  | grep -v "Cannot export local symbol"; exit $${PIPESTATUS[0]}

## fuzz: each reader for FUZZ_TIME seconds (default 60) from the committed corpus; a crash is
## written to fixtures/fuzz/<target>/crash-* (commit it: `make test` then runs it for good)
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  work=$$(mktemp -d); cp fixtures/fuzz/$$t/* $$work/; \
	  echo "== fuzz $$t ($(FUZZ_TIME) s)"; \
	  FUZZ_TARGET=$$t QTOOL_BINARY=$(QTOOL) $(FUZZ_BIN) $$work -max_total_time=$(FUZZ_TIME) -rss_limit_mb=3072 -timeout=20 $(FUZZ_FLAGS) \
	    -artifact_prefix=fixtures/fuzz/$$t/ -print_final_stats=1 2>&1 | grep -E "^(stat::number_of_executed_units|stat::new_units_added|==[0-9]+==ERROR|SUMMARY)|Test unit written" ; \
	  status=$${PIPESTATUS[0]}; rm -rf $$work; [ "$$status" = 0 ] || exit 1; \
	done

## fuzz-ci: every harness briefly over its corpus (CI), with a fixed seed
fuzz-ci:
	@$(MAKE) -s fuzz FUZZ_TIME=$(or $(CI_FUZZ_TIME),10) FUZZ_FLAGS=-seed=1

## venv: the Python reference libraries, for fixtures and benchmarks only
venv: $(PYTHON)
$(PYTHON): fixtures/generate/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r fixtures/generate/requirements.txt
	@touch $(PYTHON)

## bench: whole-process qtool against the Python peers, same inputs, same run
bench: build venv
	$(PYTHON) Benchmarks/bench.py

## interop: transformers/PEFT and Keras load qtool's outputs; logits, predictions and eval losses compared;
## llama.cpp and gguf-py read qtool's GGUFs (needs the venv, and llama.cpp: built by `make llama-cpp`
## unless LLAMA_CPP_BIN names the binaries' folder)
interop: build venv $(INTEROP_LLAMA)
	HF_HUB_OFFLINE=1 $(PYTHON) Tests/Interop/merge_interop.py
	$(PYTHON) Tests/Interop/hdf5_interop.py
	HF_HUB_OFFLINE=1 $(PYTHON) Tests/Interop/finetune_interop.py
	HF_HUB_OFFLINE=1 LLAMA_CPP_BIN=$(LLAMA_CPP_BIN) LLAMA_GREEDY_IDS=$(LLAMA_GREEDY_IDS) $(PYTHON) Tests/Interop/gguf_interop.py

## llama-cpp: llama.cpp's tools for `make interop` in .cache/llama.cpp-build/bin (about 10 minutes on
## 2 cores the first time; each step is skipped once done): the source of the pinned llama-cpp-python
## sdist, configured with cmake (installed when missing), and llama-greedy-ids built against it
llama-cpp: $(LLAMA_CPP_BUILD)/bin/llama-greedy-ids

# the source folder (gguf_reference.llama_cpp() downloads and checks the sdist once)
$(LLAMA_CPP_BUILD)/source: fixtures/generate/gguf_reference.py
	@mkdir -p $(LLAMA_CPP_BUILD)
	cd fixtures/generate && python3 -c 'import gguf_reference; print(gguf_reference.llama_cpp())' > $(CURDIR)/$@.tmp
	@mv $@.tmp $@

$(LLAMA_CPP_BUILD)/configured: $(LLAMA_CPP_BUILD)/source
	@missing=""; command -v cmake >/dev/null || missing="$$missing cmake"; command -v $(CXX) >/dev/null || missing="$$missing g++"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	cmake -S "$$(cat $<)" -B $(LLAMA_CPP_BUILD) $(LLAMA_CPP_CMAKE)
	@touch $@

$(LLAMA_CPP_BUILD)/built: $(LLAMA_CPP_BUILD)/configured
	nice -n 10 cmake --build $(LLAMA_CPP_BUILD) -j$$(nproc) --target $(LLAMA_CPP_TOOLS)
	@touch $@

$(LLAMA_CPP_BUILD)/bin/llama-greedy-ids: Tests/Interop/llama_greedy_ids.cpp $(LLAMA_CPP_BUILD)/built
	src="$$(cat $(LLAMA_CPP_BUILD)/source)"; \
	nice -n 10 $(CXX) -O2 -std=c++17 $< -I"$$src/include" -I"$$src/ggml/include" -L$(LLAMA_CPP_BUILD)/bin \
	  -lllama -lggml -lggml-base -Wl,-rpath,$(CURDIR)/$(LLAMA_CPP_BUILD)/bin -o $@

## fixtures: regenerate every golden with the reference libraries (records their versions)
fixtures: venv build
	HF_HUB_OFFLINE=1 $(PYTHON) fixtures/generate/make_all.py

## manifest: refresh fixtures/MANIFEST.sha256
manifest:
	cd fixtures && find . -type f ! -name MANIFEST.sha256 ! -path './generate/*' | LC_ALL=C sort | xargs sha256sum > MANIFEST.sha256

clean:
	rm -rf .build .build-fuzz $(DEMO)
