/**
 * @tuneloom/chat-template: render a conversation exactly as Python Jinja2 would
 * (transformers' apply_chat_template), and cut assistant-turn masks from it.
 */
export { TemplateError, type TemplateErrorKind } from "./template-error.ts";
export {
  ChatTemplate,
  compileChatTemplate,
  renderChatTemplate,
  type ChatMessage,
  type ChatTemplateVariables,
  type RenderOptions,
} from "./render.ts";
export {
  checkTrainServeParity,
  findPrefixViolations,
  firstMismatch,
  renderMessages,
  type PrefixViolation,
  type TrainServeParity,
} from "./prefix-property.ts";
export {
  PrefixPropertyError,
  assistantSpans,
  tokenMaskFromSpans,
  type AssistantSpansOptions,
  type CharSpan,
} from "./assistant-mask.ts";
export { normalizeTemplateSource, templateSha256 } from "./template-source.ts";
export { strftime } from "./strftime.ts";
