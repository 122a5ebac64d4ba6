// llama-greedy-ids: greedy decoding with llama.cpp that prints token ids, for Tests/Interop/gguf_interop.py.
//
// Built by `make llama-cpp` against the llama.cpp that the pinned llama-cpp-python sdist vendors
// (after its examples/simple). Argmax of the logits at every step, no sampler state, no chat
// template: the same rule as transformers' generate(do_sample=False).
//
//   llama-greedy-ids -m model.gguf (--ids 1,2,3 | --text "prompt" [--no-bos] [--no-parse-special])
//                    [-n 16] [--ignore-eos] [--lora adapter.gguf [--lora-scale 1.0]] [-t threads]
//                    [--logits FILE [--logits-all]] [--verbose]
//
// --ids passes the prompt as it is (no BOS added); --text tokenizes it as llama-tokenize does.
// --ignore-eos keeps generating after an end-of-generation token (it is not suppressed).
// --logits FILE writes the logits after the prompt, one value a line; with --logits-all, one line
// per step, the values space-separated.
// stdout: "prompt_ids: …", "generated_ids: …", "generated_text: …"; llama.cpp's log goes to
// stderr only with --verbose (errors are always printed).
#include "llama.h"

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

namespace {

bool verbose = false;

void log_callback(ggml_log_level level, const char * text, void *) {
    if (verbose || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

int usage(const char * program) {
    fprintf(stderr,
            "usage: %s -m model.gguf (--ids 1,2,3 | --text STR [--no-bos] [--no-parse-special]) [-n N] [--ignore-eos]\n"
            "       [--lora adapter.gguf [--lora-scale S]] [-t threads] [--logits FILE [--logits-all]] [--verbose]\n",
            program);
    return 2;
}

// The tokens of `tokens` at positions pos_0…, logits requested for the last one only.
void fill_batch(llama_batch_ext * batch, const std::vector<llama_token> & tokens, llama_pos pos_0) {
    llama_batch_ext_clear(batch);
    for (size_t i = 0; i < tokens.size(); ++i) {
        const int32_t index = llama_batch_ext_add_token(batch, 0, tokens[i]);
        const llama_pos pos = pos_0 + (llama_pos) i;
        llama_batch_ext_set_pos(batch, index, &pos);
    }
    llama_batch_ext_set_output_logits(batch, (int32_t) tokens.size() - 1, true);
}

void print_ids(const char * label, const std::vector<llama_token> & ids) {
    printf("%s:", label);
    for (llama_token id : ids) {
        printf(" %d", id);
    }
    printf("\n");
}

}  // namespace

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    std::string model_path, lora_path, ids_text, text, logits_path;
    bool have_text = false, ignore_eos = false, parse_special = true, add_special = true, logits_all = false;
    float lora_scale = 1.0f;
    int n_predict = 8, n_threads = 2;
    for (int i = 1; i < argc; i++) {
        const std::string arg = argv[i];
        auto value = [&]() -> const char * {
            if (i + 1 >= argc) {
                fprintf(stderr, "error: %s needs a value\n", arg.c_str());
                exit(2);
            }
            return argv[++i];
        };
        if (arg == "-m") model_path = value();
        else if (arg == "-n") n_predict = atoi(value());
        else if (arg == "-t") n_threads = atoi(value());
        else if (arg == "--lora") lora_path = value();
        else if (arg == "--lora-scale") lora_scale = strtof(value(), nullptr);
        else if (arg == "--ids") ids_text = value();
        else if (arg == "--text") { text = value(); have_text = true; }
        else if (arg == "--no-bos") add_special = false;
        else if (arg == "--no-parse-special") parse_special = false;
        else if (arg == "--ignore-eos") ignore_eos = true;
        else if (arg == "--logits") logits_path = value();
        else if (arg == "--logits-all") logits_all = true;
        else if (arg == "--verbose") verbose = true;
        else {
            fprintf(stderr, "error: unknown argument %s\n", arg.c_str());
            return usage(argv[0]);
        }
    }
    if (model_path.empty() || (ids_text.empty() == !have_text) || n_predict < 1 || n_threads < 1) {
        return usage(argv[0]);
    }

    llama_log_set(log_callback, nullptr);
    llama_backend_init();
    llama_model_params model_params = llama_model_default_params();
    model_params.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), model_params);
    if (!model) {
        fprintf(stderr, "error: cannot load %s\n", model_path.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    std::vector<llama_token> prompt;
    if (have_text) {
        const int n = -llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), nullptr, 0, add_special, parse_special);
        prompt.resize(n);
        if (llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), prompt.data(), n, add_special, parse_special) < 0) {
            fprintf(stderr, "error: tokenization failed\n");
            return 1;
        }
    } else {
        std::stringstream stream(ids_text);
        std::string item;
        while (std::getline(stream, item, ',')) {
            if (!item.empty()) {
                prompt.push_back(atoi(item.c_str()));
            }
        }
    }
    if (prompt.empty()) {
        fprintf(stderr, "error: empty prompt\n");
        return 1;
    }
    for (llama_token id : prompt) {
        if (id < 0 || id >= n_vocab) {
            fprintf(stderr, "error: token id %d outside the vocabulary (%d tokens)\n", id, n_vocab);
            return 1;
        }
    }

    llama_context_params context_params = llama_context_default_params();
    context_params.n_ctx = (uint32_t) (prompt.size() + n_predict + 1);
    context_params.n_batch = (uint32_t) prompt.size();
    context_params.n_threads = context_params.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, context_params);
    if (!ctx) {
        fprintf(stderr, "error: cannot create a context\n");
        return 1;
    }

    llama_adapter_lora * lora = nullptr;
    if (!lora_path.empty()) {
        lora = llama_adapter_lora_init(model, lora_path.c_str());
        if (!lora) {
            fprintf(stderr, "error: cannot load the LoRA adapter %s\n", lora_path.c_str());
            return 1;
        }
        if (llama_set_adapters_lora(ctx, &lora, 1, &lora_scale) != 0) {
            fprintf(stderr, "error: cannot apply the LoRA adapter %s\n", lora_path.c_str());
            return 1;
        }
    }

    llama_sampler * sampler = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(sampler, llama_sampler_init_greedy());

    FILE * logits_file = nullptr;
    if (!logits_path.empty() && !(logits_file = fopen(logits_path.c_str(), "w"))) {
        fprintf(stderr, "error: cannot write %s\n", logits_path.c_str());
        return 1;
    }
    print_ids("prompt_ids", prompt);

    llama_batch_ext * batch = llama_batch_ext_init(ctx);
    fill_batch(batch, prompt, 0);
    llama_pos n_past = 0;
    int32_t n_batch_tokens = (int32_t) prompt.size();
    std::vector<llama_token> generated;
    std::string generated_text;
    for (int step = 0; step < n_predict; step++) {
        if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch) != 0) {
            fprintf(stderr, "error: decoding failed at step %d\n", step);
            return 1;
        }
        n_past += n_batch_tokens;
        const float * logits = llama_get_logits_ith(ctx, -1);
        if (logits_file && logits_all) {
            for (int v = 0; v < n_vocab; v++) {
                fprintf(logits_file, v ? " %.9g" : "%.9g", logits[v]);
            }
            fprintf(logits_file, "\n");
        } else if (logits_file && step == 0) {
            for (int v = 0; v < n_vocab; v++) {
                fprintf(logits_file, "%.9g\n", logits[v]);
            }
        }
        const llama_token id = llama_sampler_sample(sampler, ctx, -1);
        generated.push_back(id);
        char piece[256];
        const int n = llama_token_to_piece(vocab, id, piece, sizeof(piece), 0, true);
        if (n > 0) {
            generated_text.append(piece, n);
        }
        if (!ignore_eos && llama_vocab_is_eog(vocab, id)) {
            break;
        }
        fill_batch(batch, {id}, n_past);
        n_batch_tokens = 1;
    }
    print_ids("generated_ids", generated);
    printf("generated_text: %s\n", generated_text.c_str());

    if (logits_file) {
        fclose(logits_file);
    }
    llama_batch_ext_free(batch);
    llama_sampler_free(sampler);
    llama_free(ctx);
    if (lora) {
        llama_adapter_lora_free(lora);
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
