export * from "./tunnelLink.js";
export * from "./tunnelStream.js";
export * from "./webSocketFrames.js";
export * from "./webSocketHandshake.js";
export * from "./gcTuning.js";
