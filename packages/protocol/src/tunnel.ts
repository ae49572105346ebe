// Frames of the relay tunnel (`GET /agent/tunnel`). Defined by the relay work (issue 4).
export {};
