//! Lanes: containers holding a network namespace on the build network, which steps share one
//! after another. Joining a namespace costs a step's container far less than getting one of
//! its own (the dearest part of starting a container). Steps that run at once are in
//! different lanes, so they never share ports or addresses; a detached step, which other
//! steps reach by its name, gets a namespace of its own. A lane is free again once its step
//! has exited: its processes ended with its container.

/// Which lane each step holds or has reserved. Lane `i` is the container
/// `<network>.lane-<i>` (a `.` never appears in a step's container name).
pub(super) struct Lanes {
    network: String,
    slots: Vec<Slot>,
}

#[derive(Default)]
struct Slot {
    /// Handed out to a caller, who starts it before anything joins it.
    started: bool,
    /// The step running (or starting) in the lane.
    user: Option<usize>,
    /// The step whose container was staged in the lane ahead of its start.
    reserved: Option<usize>,
}

/// A lane for a step, and whether it must be started first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lane {
    pub index: usize,
    pub name: String,
    pub new: bool,
}

impl Lanes {
    /// The lanes of the build on `network`, none started yet.
    pub fn new(network: &str) -> Lanes {
        Lanes {
            network: network.to_owned(),
            slots: Vec::new(),
        }
    }

    /// Hands out lane 0 for setup to start, before any step needs it.
    pub fn first(&mut self) -> Lane {
        if self.slots.is_empty() {
            self.slots.push(Slot::default());
        }
        self.hand_out(0)
    }

    /// The names of every lane handed out: what teardown removes.
    pub fn names(&self) -> Vec<String> {
        (0..self.slots.len())
            .filter(|&index| self.slots[index].started)
            .map(|index| Lanes::name(&self.network, index))
            .collect()
    }

    /// The container name of lane `index`.
    pub fn name(network: &str, index: usize) -> String {
        format!("{network}.lane-{index}")
    }

    /// Reserves a lane for `step`, to be staged in ahead of its start: the lane of a step it
    /// depends on (done by the time it starts), else one nobody uses or reserved, else a
    /// new one.
    pub fn reserve(&mut self, step: usize, depends_on: &[usize]) -> Lane {
        let held_by_dependency = self.slots.iter().position(|slot| {
            slot.reserved.is_none() && slot.user.is_some_and(|user| depends_on.contains(&user))
        });
        let index = held_by_dependency.unwrap_or_else(|| self.free_or_new());
        self.slots[index].reserved = Some(step);
        self.hand_out(index)
    }

    /// The lane `step` runs in from now: the one its container was `staged` in if no other
    /// step uses it, else a free or new one (its container must then be staged again).
    pub fn claim(&mut self, step: usize, staged: Option<usize>) -> Lane {
        self.forget_reservation(step);
        let index = match staged {
            Some(index) if self.slots[index].user.is_none() => index,
            _ => self.free_or_new(),
        };
        self.slots[index].user = Some(step);
        self.hand_out(index)
    }

    /// `step` has ended, or will not run: its lane and reservation are free.
    pub fn release(&mut self, step: usize) {
        self.forget_reservation(step);
        for slot in &mut self.slots {
            if slot.user == Some(step) {
                slot.user = None;
            }
        }
    }

    fn forget_reservation(&mut self, step: usize) {
        for slot in &mut self.slots {
            if slot.reserved == Some(step) {
                slot.reserved = None;
            }
        }
    }

    fn free_or_new(&mut self) -> usize {
        match self
            .slots
            .iter()
            .position(|slot| slot.user.is_none() && slot.reserved.is_none())
        {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        }
    }

    fn hand_out(&mut self, index: usize) -> Lane {
        let new = !self.slots[index].started;
        self.slots[index].started = true;
        Lane {
            index,
            name: Lanes::name(&self.network, index),
            new,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lanes;

    #[test]
    fn a_chain_of_steps_runs_in_one_lane() {
        let mut lanes = Lanes::new("net");
        assert!(lanes.first().new);
        let first = lanes.claim(0, None);
        assert_eq!((first.index, first.new), (0, false));
        // The next step, staged while the first runs, takes the lane of the step it waits for.
        let staged = lanes.reserve(1, &[0]);
        assert_eq!((staged.index, staged.new), (0, false));
        lanes.release(0);
        assert_eq!(lanes.claim(1, Some(0)).index, 0);
        assert_eq!(lanes.names(), vec!["net.lane-0".to_owned()]);
    }

    #[test]
    fn steps_running_at_once_get_lanes_of_their_own() {
        let mut lanes = Lanes::new("net");
        lanes.first();
        assert_eq!(lanes.claim(0, None).index, 0);
        // Independent of the running step: a new lane, which its stager starts.
        let staged = lanes.reserve(1, &[]);
        assert_eq!((staged.index, staged.new), (1, true));
        // A third step started while both others run gets a third lane.
        let third = lanes.claim(2, None);
        assert_eq!((third.index, third.new), (2, true));
        assert_eq!(lanes.claim(1, Some(1)), staged_again(1));
        assert_eq!(lanes.names().len(), 3);
    }

    fn staged_again(index: usize) -> super::Lane {
        super::Lane {
            index,
            name: format!("net.lane-{index}"),
            new: false,
        }
    }

    #[test]
    fn a_step_whose_lane_is_still_in_use_when_it_starts_moves_to_another() {
        let mut lanes = Lanes::new("net");
        lanes.first();
        lanes.claim(0, None);
        assert_eq!(lanes.reserve(1, &[0]).index, 0);
        // Step 0 still runs (it could not end first): step 1 gets a lane of its own.
        let moved = lanes.claim(1, Some(0));
        assert_eq!((moved.index, moved.new), (1, true));
    }

    #[test]
    fn a_reserved_lane_is_not_given_to_another_step() {
        let mut lanes = Lanes::new("net");
        lanes.first();
        lanes.claim(0, None);
        assert_eq!(lanes.reserve(2, &[0]).index, 0);
        lanes.release(0);
        // Step 1 becomes ready first: lane 0 is kept for step 2.
        assert_eq!(lanes.claim(1, None).index, 1);
        assert_eq!(lanes.claim(2, Some(0)).index, 0);
    }
}
