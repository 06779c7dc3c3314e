// Greedy batch-1 decoding of a GGUF file with llama.cpp (through the npm package node-llama-cpp,
// which ships prebuilt llama.cpp), timed the way benchmarks/decode.py times yunque.
//
//   node benchmarks/llama_cpp_decode.mjs MODEL.gguf THREADS NEW_TOKENS REPS PROMPT_ID,PROMPT_ID,...
//
// Prints one JSON line: {"ids": [...], "prompt_seconds": [...], "decode_seconds": [...]}, a
// figure per repetition; decode_seconds covers the NEW_TOKENS - 1 tokens after the first.
// NODE_PATH must reach node-llama-cpp (benchmarks/decode.py sets it).
import {createRequire} from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH ?? ".", "noop.js"));
const {getLlama} = await import(require.resolve("node-llama-cpp"));

const [modelPath, threads, newTokens, reps, promptText] = process.argv.slice(2);
const prompt = promptText.split(",").map(Number);
const llama = await getLlama({gpu: false, maxThreads: Number(threads), logLevel: "error"});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({contextSize: 512, threads: Number(threads), batchSize: 512, sequences: 1});
const sequence = context.getSequence();
const result = {ids: [], prompt_seconds: [], decode_seconds: []};
for (let rep = 0; rep < Number(reps); rep++) {
    await sequence.clearHistory();
    const ids = [];
    let start = performance.now();
    let first = 0;
    for await (const token of sequence.evaluate(prompt, {temperature: 0})) {
        ids.push(token);
        if (ids.length === 1)
            first = performance.now();
        if (ids.length >= Number(newTokens))
            break;
    }
    const end = performance.now();
    result.ids = ids;
    result.prompt_seconds.push((first - start) / 1000);
    result.decode_seconds.push((end - first) / 1000);
}
console.log(JSON.stringify(result));
await context.dispose();
await model.dispose();
await llama.dispose();
