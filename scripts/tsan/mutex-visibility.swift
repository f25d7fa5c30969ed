// Does ThreadSanitizer see Synchronization.Mutex on this toolchain? Four threads add to a
// counter and an array under one Mutex: a correct program. `scripts/check-race` builds this
// with -sanitize=thread first; if TSan reports a race here, it reports every access guarded
// by a Mutex (which is how every service in Sluice guards its state) as a race too, and
// those reports say nothing about the code.
import Dispatch
import Synchronization

struct Guarded {
    var count = 0
    var items: [Int] = []
}

let mutex = Mutex(Guarded())
let group = DispatchGroup()
for _ in 0..<4 {
    DispatchQueue.global().async(group: group) {
        for index in 0..<10_000 {
            mutex.withLock {
                $0.count += 1
                $0.items.append(index)
            }
        }
    }
}
group.wait()
print(mutex.withLock { $0.count })
