interface Slab {
  mem: Buffer;
  used: number;
  outstanding: number;
  retired: boolean;
}

/**
 * Reusable memory for outgoing data frames. A fresh 64 KiB buffer per frame costs page faults and
 * garbage collection on every byte relayed; frames are instead carved from a few slabs that are
 * reused once every frame written from them has been handed to the kernel (the ws send callback).
 */
export class FrameSlabs {
  private current: Slab;
  private readonly free: Slab[] = [];

  constructor(
    private readonly slabBytes = 1024 * 1024,
    private readonly maxFree = 4,
  ) {
    this.current = this.newSlab();
  }

  /** `size` bytes to fill, and the function to call once they have been written out. */
  take(size: number): { buf: Buffer; release: () => void } {
    if (size > this.slabBytes) return { buf: Buffer.allocUnsafe(size), release: () => undefined };
    if (this.current.used + size > this.slabBytes) {
      this.retire(this.current);
      this.current = this.free.pop() ?? this.newSlab();
      this.current.retired = false;
    }
    const slab = this.current;
    const buf = slab.mem.subarray(slab.used, slab.used + size);
    slab.used += size;
    slab.outstanding += 1;
    let released = false;
    return {
      buf,
      release: () => {
        if (released) return;
        released = true;
        slab.outstanding -= 1;
        if (slab.retired && slab.outstanding === 0) this.recycle(slab);
      },
    };
  }

  private newSlab(): Slab {
    return { mem: Buffer.allocUnsafeSlow(this.slabBytes), used: 0, outstanding: 0, retired: false };
  }

  private retire(slab: Slab): void {
    slab.retired = true;
    if (slab.outstanding === 0) this.recycle(slab);
  }

  private recycle(slab: Slab): void {
    slab.used = 0;
    if (this.free.length < this.maxFree && !this.free.includes(slab)) this.free.push(slab);
  }
}
