// openai_chat.mjs - the official `openai` npm package against blip2d --http
// (run by tests/test_http_node.py): a caption and a question, streamed and
// not, /v1/models, and a refused image URL.  Prints one JSON object of what
// it got; the Python test compares it with blip2ctl's answers.
//   node openai_chat.mjs BASE_URL IMAGE QUESTION
import fs from "node:fs";
import OpenAI from "openai";

const [base, image, question] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "unused-on-loopback", maxRetries: 0, timeout: 300000 });
const mime = image.endsWith(".png") ? "image/png" : "image/jpeg";
const url = `data:${mime};base64,` + fs.readFileSync(image).toString("base64");
const imagePart = { type: "image_url", image_url: { url } };
const out = {};

const r = await client.chat.completions.create({ model: "blip2", messages: [{ role: "user", content: [imagePart] }] });
out.caption = r.choices[0].message.content;
out.finish = r.choices[0].finish_reason;
out.object = r.object;
out.usage = r.usage;

const stream = await client.chat.completions.create({
  model: "blip2", messages: [{ role: "user", content: [imagePart] }], stream: true,
  stream_options: { include_usage: true },
});
out.stream = "";
out.chunks = 0;
for await (const chunk of stream) {
  out.chunks++;
  if (chunk.usage) out.stream_usage = chunk.usage;
  for (const c of chunk.choices) {
    out.stream += c.delta?.content ?? "";
    if (c.finish_reason) out.stream_finish = c.finish_reason;
  }
}

const q = await client.chat.completions.create({
  model: "blip2", temperature: 0, max_completion_tokens: 20,
  messages: [{ role: "user", content: [imagePart, { type: "text", text: question }] }],
});
out.answer = q.choices[0].message.content;

const qs = await client.chat.completions.create({
  model: "blip2", temperature: 0, stream: true,
  messages: [{ role: "user", content: [imagePart, { type: "text", text: question }] }],
});
out.answer_stream = "";
for await (const chunk of qs) for (const c of chunk.choices) out.answer_stream += c.delta?.content ?? "";

out.models = (await client.models.list()).data.map((m) => m.id);

try {
  await client.chat.completions.create({
    model: "blip2",
    messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "https://example.com/cat.jpg" } }] }],
  });
  out.error = null;
} catch (e) {
  out.error = { status: e.status, code: e.code, type: e.type, param: e.param, message: e.message,
                is_bad_request: e instanceof OpenAI.BadRequestError };
}
console.log(JSON.stringify(out));
