export * from "./defaults.js";
export * from "./errors.js";
export * from "./http.js";
export * from "./secret.js";
export * from "./security.js";
export * from "./tunnel.js";
export * from "./providerHost.js";
