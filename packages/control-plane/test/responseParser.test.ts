// The relay reads Jupyter's answers with Node's own llhttp binding (`_http_common.HTTPParser`),
// which Node does not document. Its start-up check must pass on this Node and refuse a binding
// whose shape or callbacks differ.
import { describe, expect, it } from "vitest";
import { checkResponseParser, type ResponseParserClass } from "../src/relay/jupyterConnections.js";

/** A stand-in binding: the real constants, and an execute that calls the callbacks as `behave` says. */
function fakeParser(behave: (self: Record<number, (...args: unknown[]) => unknown>, chunk: Buffer) => number, drop?: string): ResponseParserClass {
  class Fake {
    static RESPONSE = 2;
    static kOnMessageBegin = 0;
    static kOnHeaders = 1;
    static kOnHeadersComplete = 2;
    static kOnBody = 3;
    static kOnMessageComplete = 4;
    static kLenientNone = 0;
    [slot: number]: (...args: unknown[]) => unknown;
    initialize(): void {}
    execute(chunk: Buffer): number {
      return behave(this, chunk);
    }
    finish(): undefined {
      return undefined;
    }
  }
  if (drop) delete (Fake as unknown as Record<string, unknown>)[drop];
  return Fake as unknown as ResponseParserClass;
}

describe("the relay's check of Node's HTTP parser", () => {
  it("accepts this Node's parser", () => {
    expect(() => checkResponseParser()).not.toThrow();
  });

  it("refuses a binding without a callback slot it relies on", () => {
    expect(() => checkResponseParser(fakeParser(() => 0, "kOnMessageBegin"))).toThrow(
      `The relay cannot use this Node's HTTP parser (${process.version}): no kOnMessageBegin. Use Node 20.`,
    );
  });

  it("refuses a binding whose body callback gets other arguments (Node 16's buffer, offset, length)", () => {
    const oldStyle = fakeParser((self, chunk) => {
      self[0]?.();
      self[2]?.(1, 1, ["Content-Length", "2"], undefined, undefined, 200, "OK", false, true);
      self[3]?.(chunk, chunk.length - 2, 2); // the whole buffer, with an offset
      self[4]?.();
      return chunk.length;
    });
    expect(() => checkResponseParser(oldStyle)).toThrow(/parsed 40 bytes as "begin\|head 200 OK Content-Length,2 true\|body HTTP\/1\.1 200 OK/);
  });

  it("refuses a binding whose headers callback has another order of arguments", () => {
    const reordered = fakeParser((self, chunk) => {
      self[2]?.(["Content-Length", "2"], 1, 1, undefined, undefined, 200, "OK", false, true);
      return chunk.length;
    });
    expect(() => checkResponseParser(reordered)).toThrow(/parsing a sample answer threw/);
  });
});
