//! Choosing the chat template of a conversation stage: `--template auto|NAME|FILE.jinja`.
//!
//! `auto` is the tokenizer's own template (what `apply_chat_template` uses); the named
//! built-ins are the fallback for tokenizers without one. The built-ins carry
//! `{% generation %}` markers, so their assistant masks are exact and match transformers'
//! `return_assistant_tokens_mask`.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};
use crate::reader::hex;
use crate::template::ChatTemplate;
use crate::tokenizer::LoadedTokenizer;

const CHATML: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}{%- if message['role'] == 'assistant' %}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

const QWEN: &str = "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}{%- if message['role'] == 'assistant' %}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

const LLAMA3: &str = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}{%- if message['role'] == 'assistant' %}{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}{%- else %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

const VICUNA: &str = "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + ' ' }}{%- else %}{{- 'A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user\\'s questions. ' }}{%- endif %}{%- for message in messages %}{%- if message['role'] == 'user' %}{{- 'USER: ' + message['content'] + ' ' }}{%- elif message['role'] == 'assistant' %}{{- 'ASSISTANT: ' }}{% generation %}{{- message['content'] + eos_token }}{% endgeneration %}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- 'ASSISTANT:' }}{%- endif %}";

const ALPACA: &str = "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- else %}{{- 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' }}{%- endif %}{%- for message in messages %}{%- if message['role'] == 'user' %}{{- '### Instruction:\\n' + message['content'] + '\\n\\n' }}{%- elif message['role'] == 'assistant' %}{{- '### Response:\\n' }}{% generation %}{{- message['content'] + eos_token }}{% endgeneration %}{{- '\\n\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '### Response:\\n' }}{%- endif %}";

/// The built-in templates, by name.
pub const BUILTINS: [(&str, &str); 5] = [
    ("chatml", CHATML),
    ("qwen", QWEN),
    ("llama3", LLAMA3),
    ("vicuna", VICUNA),
    ("alpaca", ALPACA),
];

/// What the manifest records of the template.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateInfo {
    /// `tokenizer_config.json`, a built-in name, or a file path.
    pub name: String,
    pub sha256: String,
    pub generation_blocks: bool,
}

/// Resolves `--template` and compiles it.
pub fn resolve(spec: &str, tokenizer: &LoadedTokenizer) -> Result<(ChatTemplate, TemplateInfo)> {
    let (source, name) = if spec == "auto" {
        tokenizer.chat_template()?.ok_or_else(|| {
            CoreError::config(
                "template",
                format!(
                    "the tokenizer at '{}' has no chat template; pick one: --template {} or FILE.jinja",
                    tokenizer.dir.display(),
                    BUILTINS.map(|(n, _)| n).join("|")
                ),
            )
        })?
    } else if let Some((name, source)) = BUILTINS.iter().find(|(n, _)| *n == spec) {
        (source.to_string(), name.to_string())
    } else if spec.ends_with(".jinja") || Path::new(spec).is_file() {
        let source = std::fs::read_to_string(spec).map_err(|e| CoreError::io(spec, e))?;
        (source, spec.to_string())
    } else {
        return Err(CoreError::config(
            "template",
            format!(
                "'{spec}' is not auto, a built-in ({}) or a .jinja file",
                BUILTINS.map(|(n, _)| n).join(", ")
            ),
        ));
    };
    let template = ChatTemplate::new(&source, &name)?;
    let info = TemplateInfo {
        sha256: hex(&Sha256::digest(source.as_bytes())),
        generation_blocks: template.has_generation_blocks(),
        name,
    };
    Ok((template, info))
}
