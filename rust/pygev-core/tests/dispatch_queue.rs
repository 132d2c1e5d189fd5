//! The dispatch queue's wake-up as a descriptor (for a dispatcher an asyncio loop drives):
//! armed when a look finds nothing, rung by the next event, timer or stop; its depth.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use pygev_core::{DispatchQueue, Event, Found};

/// Whether `fd` is readable now.
fn readable(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, the count says one, and a zero timeout returns at once.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n == 1 && poll.revents & libc::POLLIN != 0
}

#[test]
fn the_doorbell_rings_once_a_look_found_nothing_and_work_came() {
    let queue = DispatchQueue::new();
    let fd = queue.doorbell_fd().unwrap();
    assert_eq!(queue.doorbell_fd().unwrap(), fd, "one doorbell");
    let (mut batch, mut due) = (Vec::new(), Vec::new());
    // Not armed yet: a push rings nothing, and a look takes the event.
    queue.push(&mut vec![Event::Quiesced { loop_index: 0 }]);
    assert!(!readable(fd));
    assert_eq!(queue.try_take(&mut batch, &mut due), Found::Work);
    assert_eq!(batch.len(), 1);
    batch.clear();
    // Nothing left: armed; the next push rings, once.
    assert_eq!(
        queue.try_take(&mut batch, &mut due),
        Found::Idle { next_timer: None }
    );
    queue.push(&mut vec![Event::Quiesced { loop_index: 1 }]);
    queue.push(&mut vec![Event::Quiesced { loop_index: 2 }]);
    assert!(readable(fd));
    queue.clear_doorbell();
    assert!(!readable(fd));
    assert_eq!(queue.try_take(&mut batch, &mut due), Found::Work);
    assert_eq!(batch.len(), 2, "both pushes, in one take");
}

#[test]
fn timers_and_stops_ring_too_and_idle_reports_the_next_deadline() {
    let queue = DispatchQueue::new();
    let fd = queue.doorbell_fd().unwrap();
    let (mut batch, mut due) = (Vec::new(), Vec::new());
    assert!(matches!(
        queue.try_take(&mut batch, &mut due),
        Found::Idle { .. }
    ));
    let soon = Instant::now() + Duration::from_millis(30);
    queue.schedule_timer(soon, 7);
    assert!(
        readable(fd),
        "a new timer rings: the driver must learn its deadline"
    );
    queue.clear_doorbell();
    assert_eq!(
        queue.try_take(&mut batch, &mut due),
        Found::Idle {
            next_timer: Some(soon)
        }
    );
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(queue.try_take(&mut batch, &mut due), Found::Work);
    assert_eq!(due, [7]);
    due.clear();
    assert!(matches!(
        queue.try_take(&mut batch, &mut due),
        Found::Idle { .. }
    ));
    queue.request_stop();
    assert!(readable(fd));
    assert_eq!(queue.try_take(&mut batch, &mut due), Found::Work);
    assert!(queue.stop_requested());
    // Reported once: a stopping driver then waits for the loops' events, not spinning.
    assert!(matches!(
        queue.try_take(&mut batch, &mut due),
        Found::Idle { .. }
    ));
    queue.push(&mut vec![Event::Quiesced { loop_index: 0 }]);
    assert!(readable(fd), "armed again");
    assert_eq!(queue.try_take(&mut batch, &mut due), Found::Work);
}

#[test]
fn a_wake_rings_an_armed_doorbell_and_ends_a_blocking_wait() {
    let queue = std::sync::Arc::new(DispatchQueue::new());
    let fd = queue.doorbell_fd().unwrap();
    let (mut batch, mut due) = (Vec::new(), Vec::new());
    queue.wake();
    assert!(!readable(fd), "not armed: nothing to ring");
    assert!(matches!(
        queue.try_take(&mut batch, &mut due),
        Found::Idle { .. }
    ));
    queue.wake();
    assert!(readable(fd));
    queue.clear_doorbell();
    // A blocking wait ends at the wake, long before its bound.
    let waker = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            queue.wake();
        })
    };
    let began = Instant::now();
    queue.wait(&mut batch, &mut due, Duration::from_secs(30));
    waker.join().unwrap();
    assert!(began.elapsed() < Duration::from_secs(30));
    assert!(batch.is_empty() && due.is_empty());
}

#[test]
fn queued_events_counts_what_the_dispatcher_has_not_taken() {
    let queue = DispatchQueue::new();
    assert_eq!(queue.queued_events(), 0);
    queue.push(&mut vec![
        Event::Quiesced { loop_index: 0 },
        Event::Quiesced { loop_index: 1 },
    ]);
    queue.push(&mut vec![Event::Quiesced { loop_index: 2 }]);
    assert_eq!(queue.queued_events(), 3);
    let (mut batch, mut due) = (Vec::new(), Vec::new());
    queue.try_take(&mut batch, &mut due);
    assert_eq!(queue.queued_events(), 0);
}
